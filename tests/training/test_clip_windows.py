"""One clip-window planner: training, evaluation and the service cut clips the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccnet.inference.clips import plan_windows as service_windows
from ccnet.model.clip_windows import first_cover, plan_windows
from ccnet.model.zoo import IMAGENET_NORMALIZATION
from ccnet.training.datasets import ClipDataset, load_split
from ccnet.training.transforms import EvalTransform
from tests.training.conftest import stripes_mask, write_image, write_mask

EVAL = EvalTransform(IMAGENET_NORMALIZATION)


def test_windows_cover_every_frame_and_evaluation_scores_each_once() -> None:
    for length in range(1, 14):
        for window in range(1, 6):
            for stride in range(1, window + 1):
                plan = plan_windows(length, window, stride)
                seen = {f for start, stop in plan for f in range(start, stop)}
                assert seen == set(range(length)), (length, window, stride)
                assert all(stop - start == min(window, length) for start, stop in plan)
            scored = [0] * length
            evaluation = plan_windows(length, window, window)
            for (start, _), counted in zip(evaluation, first_cover(evaluation), strict=True):
                for t, flag in enumerate(counted):
                    scored[start + t] += flag
            assert scored == [1] * length, (length, window)


def test_training_windows_are_full_and_reach_the_clip_end() -> None:
    assert plan_windows(3, 4, 1, full_only=True) == []  # too short to train on
    assert plan_windows(0, 4, 1, full_only=True) == []
    assert plan_windows(6, 4, 1, full_only=True) == [(0, 4), (1, 5), (2, 6)]
    # a stride that does not reach the end still trains on the last frame
    assert plan_windows(5, 2, 2, full_only=True) == [(0, 2), (2, 4), (3, 5)]
    assert plan_windows(9, 2, 4, full_only=True) == [(0, 2), (4, 6), (7, 9)]


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        plan_windows(5, 0, 1)
    with pytest.raises(ValueError, match="stride"):
        plan_windows(5, 2, 0)
    with pytest.raises(ValueError, match="uncovered"):
        plan_windows(9, 2, 4)
    with pytest.raises(ValueError, match="at least one frame"):
        plan_windows(0, 2, 2)


@pytest.mark.parametrize("length", [5, 7, 8])
def test_evaluation_windows_are_the_service_windows_without_overlap(
    tmp_path: Path, length: int
) -> None:
    for t in range(length):
        clip = tmp_path / "train" / "c0"
        write_image(clip / "images" / f"{t:03d}.png", seed=t)
        write_mask(clip / "masks" / f"{t:03d}.png", stripes_mask([0, 1]))
    index = load_split(tmp_path, "train", "clips", progress=False)
    dataset = ClipDataset(index, 3, EVAL, stride=None)
    evaluated = [(frames[0], frames[-1] + 1) for frames, _ in dataset.windows]
    assert evaluated == service_windows(length, 3, overlap=0)


def test_training_clip_dataset_covers_the_tail(tmp_path: Path) -> None:
    for t in range(5):
        clip = tmp_path / "train" / "c0"
        write_image(clip / "images" / f"{t:03d}.png", seed=t)
        write_mask(clip / "masks" / f"{t:03d}.png", stripes_mask([0, 1]))
    index = load_split(tmp_path, "train", "clips", progress=False)
    dataset = ClipDataset(index, 2, EVAL, stride=2)
    assert [frames for frames, _ in dataset.windows] == [(0, 1), (2, 3), (3, 4)]
    assert all(all(counted) for _, counted in dataset.windows)
