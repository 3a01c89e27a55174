"""Clip scores: label flicker counts only pixels whose truth stays, per pair group."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ccnet.model import build_model
from ccnet.training.datasets import load_split
from ccnet.training.synth import CORRUPTION_GROUPS, corruption_groups, generate
from ccnet.training.temporal import LabelFlicker, score_clips


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
