"""Window planning and probability stitching for clips longer than the model's window."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from ccnet.inference.clips import (
    argmax_labels,
    plan_windows,
    segment_clip,
    stitch_labels,
    stitch_windows,
    window_weights,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits.astype(np.float64) - logits.max(axis=0))
    return exp / exp.sum(axis=0)


def _frame_logits(num_frames: int, classes: int = 3, size: tuple[int, int] = (4, 5)) -> np.ndarray:
    """(K, T, H, W) logits that depend on the frame only, as a per-frame model would give."""
    return np.random.default_rng(num_frames).normal(0, 3, (classes, num_frames, *size))


@pytest.mark.parametrize(
    ("num_frames", "window", "overlap", "expected"),
    [
        (3, 4, 2, [(0, 3)]),  # shorter than a window
        (4, 4, 2, [(0, 4)]),  # exactly one window
        (10, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),
        (11, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10), (7, 11)]),  # last one shifted back
        (8, 4, 0, [(0, 4), (4, 8)]),
        (9, 4, 0, [(0, 4), (4, 8), (5, 9)]),
        (3, 1, 0, [(0, 1), (1, 2), (2, 3)]),
        (6, 4, 3, [(0, 4), (1, 5), (2, 6)]),
        (1, 4, 2, [(0, 1)]),
    ],
)
def test_plan_windows(
    num_frames: int, window: int, overlap: int, expected: list[tuple[int, int]]
) -> None:
    assert plan_windows(num_frames, window, overlap) == expected


def test_plan_windows_covers_every_frame_with_full_windows() -> None:
    for num_frames in range(1, 30):
        for window in range(1, 7):
            for overlap in range(window):
                case = f"T={num_frames} window={window} overlap={overlap}"
                windows = plan_windows(num_frames, window, overlap)
                covered = np.zeros(num_frames, dtype=int)
                for start, stop in windows:
                    covered[start:stop] += 1
                    assert stop - start == min(window, num_frames), case
                assert covered.min() >= 1, case
                assert windows[0][0] == 0 and windows[-1][1] == num_frames, case
                starts = [start for start, _ in windows]
                assert starts == sorted(set(starts)), case
                for (_, stop), (start, _) in pairwise(windows):
                    assert stop - start >= overlap, f"{case}: neighbours share too little"
                # regular stride except for the shifted last window: no wasted model runs
                strides = {b - a for a, b in pairwise(starts[:-1])}
                assert strides <= {window - overlap}, case


@pytest.mark.parametrize(
    ("num_frames", "window", "overlap", "match"),
    [
        (10, 0, 0, "window"),
        (10, 4, -1, "overlap"),
        (10, 4, 4, "overlap"),
        (0, 4, 2, "at least one frame"),
    ],
)
def test_plan_windows_invalid(num_frames: int, window: int, overlap: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_windows(num_frames, window, overlap)


def test_window_weights_peak_in_the_middle_and_never_vanish() -> None:
    np.testing.assert_array_equal(window_weights(1), [1])
    np.testing.assert_array_equal(window_weights(4), [1, 2, 2, 1])
    np.testing.assert_array_equal(window_weights(5), [1, 2, 3, 2, 1])
    for length in range(1, 12):
        weights = window_weights(length)
        assert weights.min() > 0 and np.array_equal(weights, weights[::-1]), length


def test_single_window_is_plain_softmax_and_argmax() -> None:
    logits = _frame_logits(5)
    probs = stitch_windows(5, [(0, 5)], lambda a, b: logits[:, a:b])
    assert probs.dtype == np.float32 and probs.shape == logits.shape
    np.testing.assert_allclose(probs, _softmax(logits), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(argmax_labels(probs), logits.argmax(axis=0))


@pytest.mark.parametrize(("num_frames", "window", "overlap"), [(7, 4, 2), (12, 4, 2), (9, 3, 0)])
def test_constant_logits_come_back(num_frames: int, window: int, overlap: int) -> None:
    per_pixel = np.random.default_rng(0).normal(0, 2, (3, 1, 4, 5))

    def infer(start: int, stop: int) -> np.ndarray:
        return np.repeat(per_pixel, stop - start, axis=1)

    probs = stitch_windows(num_frames, plan_windows(num_frames, window, overlap), infer)
    expected = np.repeat(_softmax(per_pixel), num_frames, axis=1)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("num_frames", [1, 4, 5, 11, 16])
def test_frame_wise_model_is_unchanged_by_windowing(num_frames: int) -> None:
    # if every window says the same about a frame, blending must not alter it
    logits = _frame_logits(num_frames)
    windows = plan_windows(num_frames, 4, 2)
    probs = stitch_windows(num_frames, windows, lambda a, b: logits[:, a:b])
    np.testing.assert_allclose(probs, _softmax(logits), rtol=1e-5, atol=1e-7)


def test_each_window_is_inferred_once_in_order() -> None:
    calls: list[tuple[int, int]] = []
    logits = _frame_logits(11)

    def infer(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return logits[:, start:stop]

    windows = plan_windows(11, 4, 2)
    stitch_windows(11, windows, infer)
    assert calls == windows


def test_overlap_is_weighted_towards_the_window_centre() -> None:
    # window (0, 4) says class 0, window (2, 6) says class 1, with different confidences
    says_0 = np.log(np.array([0.9, 0.1]))[:, None, None, None]
    says_1 = np.log(np.array([0.3, 0.7]))[:, None, None, None]

    def infer(start: int, stop: int) -> np.ndarray:
        return np.repeat(says_0 if start == 0 else says_1, stop - start, axis=1)

    probs = stitch_windows(6, [(0, 4), (2, 6)], infer)[:, :, 0, 0]
    first, second = np.array([0.9, 0.1]), np.array([0.3, 0.7])
    # frame 2 is the first window's 3rd frame (weight 2), the second's 1st (weight 1)
    np.testing.assert_allclose(probs[:, 2], (2 * first + 1 * second) / 3, rtol=1e-6)
    np.testing.assert_allclose(probs[:, 3], (1 * first + 2 * second) / 3, rtol=1e-6)
    np.testing.assert_allclose(probs[:, :2], first[:, None].repeat(2, axis=1), rtol=1e-6)
    np.testing.assert_allclose(probs[:, 4:], second[:, None].repeat(2, axis=1), rtol=1e-6)


def test_softmax_is_stable_for_large_logits() -> None:
    logits = np.zeros((2, 3, 1, 1), dtype=np.float32)
    logits[0], logits[1] = 1000.0, -1000.0
    probs = stitch_windows(3, [(0, 3)], lambda a, b: logits[:, a:b])
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[0], 1.0)


def test_half_precision_logits_give_float32() -> None:
    logits = _frame_logits(4).astype(np.float16)
    probs = stitch_windows(4, [(0, 4)], lambda a, b: logits[:, a:b])
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, _softmax(logits), rtol=1e-3, atol=1e-4)


def test_segment_clip_labels() -> None:
    logits = _frame_logits(9)
    labels = segment_clip(9, lambda a, b: logits[:, a:b], window=4, overlap=2)
    assert labels.dtype == np.uint8 and labels.shape == (9, 4, 5)
    np.testing.assert_array_equal(labels, logits.argmax(axis=0))


def test_uncovered_frames_are_refused_before_inference() -> None:
    calls: list[tuple[int, int]] = []

    def infer(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return np.zeros((2, stop - start, 1, 1))

    with pytest.raises(ValueError, match=r"no window covers frames \[4, 5\]"):
        stitch_windows(8, [(0, 4), (6, 8)], infer)
    assert calls == []


@pytest.mark.parametrize(
    ("windows", "shapes", "match"),
    [
        ([(0, 9)], {}, "not inside"),
        ([(2, 2), (0, 4)], {}, "not inside"),
        ([(0, 4)], {(0, 4): (2, 3, 1, 1)}, r"\(K, 4, H, W\)"),
        ([(0, 4)], {(0, 4): (2, 4, 1)}, r"\(K, 4, H, W\)"),
        ([(0, 3), (1, 4)], {(1, 4): (3, 3, 1, 1)}, "inconsistent"),
        ([(0, 3), (1, 4)], {(1, 4): (2, 3, 2, 1)}, "inconsistent"),
    ],
)
def test_stitch_invalid(
    windows: list[tuple[int, int]], shapes: dict[tuple[int, int], tuple[int, ...]], match: str
) -> None:
    def infer(start: int, stop: int) -> np.ndarray:
        return np.zeros(shapes.get((start, stop), (2, stop - start, 1, 1)))

    with pytest.raises(ValueError, match=match):
        stitch_windows(4, windows, infer)


def test_argmax_labels_needs_uint8_room() -> None:
    with pytest.raises(ValueError, match="256 classes"):
        argmax_labels(np.zeros((300, 1, 1, 1), dtype=np.float32))


@pytest.mark.parametrize(
    ("frames", "window", "overlap"), [(1, 4, 2), (4, 4, 2), (11, 4, 2), (9, 3, 0)]
)
def test_streaming_labels_equal_the_argmax_of_all_probabilities(frames, window, overlap) -> None:
    rng = np.random.default_rng(frames * 10 + window)
    logits = rng.normal(size=(5, frames, 6, 7)).astype(np.float32) * 3
    windows = plan_windows(frames, window, overlap)
    calls: list[tuple[int, int]] = []

    def infer(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return logits[:, start:stop] + 0.1 * start  # a window-dependent shift, as a model's

    expected = argmax_labels(stitch_windows(frames, windows, infer))
    calls.clear()
    labels = stitch_labels(frames, windows, infer)
    assert calls == sorted(windows)
    assert labels.dtype == np.uint8 and labels.shape == (frames, 6, 7)
    np.testing.assert_array_equal(labels, expected)


def test_streaming_labels_refuse_inconsistent_windows() -> None:
    shapes = iter([(3, 4, 5, 5), (3, 4, 6, 5)])
    with pytest.raises(ValueError, match="inconsistent"):
        stitch_labels(6, [(0, 4), (2, 6)], lambda a, b: np.zeros(next(shapes), np.float32))
