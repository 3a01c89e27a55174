"""Clip scores: label flicker counts only pixels whose truth stays, per pair group."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from ccnet.model import build_model
from ccnet.training.datasets import load_split
from ccnet.training.synth import CORRUPTION_GROUPS, corruption_groups, generate
from ccnet.training.temporal import ClipFlicker, LabelFlicker, score_clips


def test_flicker_counts_changes_where_the_truth_stays() -> None:
    truth_a = torch.tensor([[0, 0], [1, 255]])
    truth_b = torch.tensor([[0, 1], [1, 255]])  # (0, 1) changes truth, (1, 1) is ignored
    flicker = LabelFlicker()
    assert flicker.rate is None
    flicker.update(torch.tensor([[2, 2], [1, 0]]), torch.tensor([[3, 0], [1, 4]]), truth_a, truth_b)
    # stable pixels: (0, 0) and (1, 0); of those, (0, 0) changed its label
    assert (flicker.stable, flicker.changed) == (2, 1)
    assert flicker.rate == 0.5


def test_score_clips_covers_every_frame_and_pair(tmp_path: Path) -> None:
    generate(tmp_path, "clips", 1, n_val=2, seed=0, size=32, frames=6, progress=False)
    index = load_split(tmp_path, "val", "clips", progress=False)
    groups_of = corruption_groups(index)
    torch.manual_seed(0)
    for name in ("ccnet-tiny", "ccnet3d-tiny"):
        model = build_model(name, num_classes=index.num_classes).eval()
        scores = score_clips(model, index, CORRUPTION_GROUPS, groups_of, progress=False)
        summary = scores.summary()
        assert summary["frames"]["all"] == 12, name
        corrupted = sum(
            len(json.loads(p.read_text())) for p in (tmp_path / "val").glob("*/corruptions.json")
        )
        assert summary["frames"]["corrupted"] == corrupted, name
        assert summary["frames"]["clean"] == 12 - corrupted, name
        flicker = scores.flicker
        assert flicker["all"].stable == flicker["clean"].stable + flicker["corrupted"].stable
        assert 0 <= summary["flicker"]["all"] <= 1, name


def _frames(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, 3, (4, 4), generator=generator),
            torch.randint(0, 3, (4, 4), generator=generator),
        )
        for _ in range(count)
    ]


def test_clip_flicker_is_the_same_in_any_order_and_holds_few_frames() -> None:
    clips = [[0, 1, 2, 3, 4], [5, 6, 7]]
    frames = _frames(8, seed=1)
    groups_of = lambda frame: ("all", "corrupted" if frame in (2, 6) else "clean")  # noqa: E731
    expected = {g: LabelFlicker() for g in ("all", "clean", "corrupted")}
    for clip in clips:
        for a, b in itertools.pairwise(clip):
            clean = a not in (2, 6) and b not in (2, 6)
            for group in ("all", "clean" if clean else "corrupted"):
                expected[group].update(frames[a][0], frames[b][0], frames[a][1], frames[b][1])
    for order in ([0, 1, 2, 3, 4, 5, 6, 7], [7, 3, 0, 5, 1, 6, 4, 2]):
        counter = ClipFlicker(clips, groups_of)
        most_held = 0
        for frame in order:
            counter.add(frame, *frames[frame])
            most_held = max(most_held, len(counter._held))
        for group, want in expected.items():
            got = counter.flicker[group]
            assert (got.changed, got.stable) == (want.changed, want.stable), (order, group)
        if order == sorted(order):
            assert most_held == 1, "in clip order only the previous frame is held"
        assert not counter._held, "every frame is let go once both neighbours were seen"


def test_clip_flicker_refuses_a_frame_twice() -> None:
    counter = ClipFlicker([[0, 1]])
    labels, truth = _frames(1, seed=2)[0]
    counter.add(0, labels, truth)
    with pytest.raises(ValueError, match="predicted twice"):
        counter.add(0, labels, truth)
