"""Running a video model over a long clip in overlapping windows of T frames.

A video model sees ``window`` frames at a time. Neighbouring windows share ``overlap`` frames and
the shared frames are blended, so a frame's result does not jump where one window ends and the next
begins. A window's prediction is most reliable in its middle, where the model sees context on both
sides, so each window's probabilities are weighted by a triangle that peaks at its centre; the
triangle never reaches zero, so the first and last frames of the clip, which only one window's
edge covers, still get that window's result.

Typical use, with ``backend_logits`` returning (K, t, H, W) logits for t frames::

    windows = plan_windows(T, 4, 2)
    labels = stitch_labels(T, windows, lambda a, b: backend_logits(frames[a:b]))

``stitch_labels`` keeps only the frames of the windows in flight, so its memory does not grow
with the clip; ``stitch_windows`` returns every frame's blended probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ccnet.model import clip_windows

__all__ = [
    "argmax_labels",
    "plan_windows",
    "segment_clip",
    "stitch_labels",
    "stitch_windows",
    "window_weights",
]

Infer = Callable[[int, int], np.ndarray]  # (start, stop) → (K, stop - start, H, W) logits


def plan_windows(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open ``[start, stop)`` windows of ``window`` frames covering ``range(num_frames)``.

    Neighbours share ``overlap`` frames. The plan is ``model.clip_windows.plan_windows`` with
    ``stride = window - overlap`` — the one planner training and evaluation use too: the last
    window is moved back to end at ``num_frames`` rather than cut short (the model is run on
    full windows only), so it may share more than ``overlap`` frames with the one before; a
    clip of at most ``window`` frames is one window ``(0, num_frames)``.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 frame, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window) = [0, {window}), got {overlap}")
    return clip_windows.plan_windows(num_frames, window, window - overlap)


def window_weights(length: int) -> np.ndarray:
    """Blend weights of a window's frames: a triangle 1, 2, …, peak, …, 2, 1 (never zero)."""
    if length < 1:
        raise ValueError(f"a window has at least one frame, got {length}")
    position = np.arange(length)
    return np.minimum(position + 1, length - position).astype(np.float32)


def stitch_windows(num_frames: int, windows: Sequence[tuple[int, int]], infer: Infer) -> np.ndarray:
    """Class probabilities (K, T, H, W) float32 for a clip, blended over overlapping windows.

    ``infer(start, stop)`` is called once per window, in order, and returns logits
    (K, stop - start, H, W). Each window's logits become probabilities (softmax over K), and
    a frame covered by several windows gets their average weighted by ``window_weights``.

    The result holds K × T × H × W floats: 19 classes over 100 frames of 512×512 is 2 GB,
    so the caller bounds T (and H, W) before calling (or uses ``stitch_labels``).

    Raises:
        ValueError: a window outside the clip, a frame no window covers, or logits of the
            wrong shape.
    """
    blended: np.ndarray | None = None
    total_weight = np.zeros(num_frames, dtype=np.float32)
    for start, stop, weighted, weights in _weighted_windows(num_frames, windows, infer):
        if blended is None:
            classes, _, height, width = weighted.shape
            blended = np.zeros((classes, num_frames, height, width), dtype=np.float32)
        blended[:, start:stop] += weighted
        total_weight[start:stop] += weights
    assert blended is not None  # every frame is covered, so at least one window ran
    blended /= total_weight[None, :, None, None]
    return blended


def stitch_labels(num_frames: int, windows: Sequence[tuple[int, int]], infer: Infer) -> np.ndarray:
    """(T, H, W) uint8 labels, blended as ``stitch_windows`` blends, in bounded memory.

    Windows run in order of their start; a frame is decided (argmax of its weighted
    probability sum, which has the argmax of the weighted mean) as soon as no later window
    covers it, so only the frames of the windows in flight are held.

    Raises:
        ValueError: as ``stitch_windows``, or more than 256 classes.
    """
    ordered = sorted(windows)
    pending: dict[int, np.ndarray] = {}
    labels: np.ndarray | None = None
    for index, (start, stop, weighted, _) in enumerate(
        _weighted_windows(num_frames, ordered, infer)
    ):
        if labels is None:
            if weighted.shape[0] > 256:
                raise ValueError(f"uint8 labels hold 256 classes, got {weighted.shape[0]}")
            labels = np.empty((num_frames, *weighted.shape[2:]), dtype=np.uint8)
        for offset, frame in enumerate(range(start, stop)):
            if frame in pending:
                pending[frame] += weighted[:, offset]
            else:
                pending[frame] = weighted[:, offset].copy()
        next_start = ordered[index + 1][0] if index + 1 < len(ordered) else num_frames
        for frame in sorted(f for f in pending if f < next_start):
            labels[frame] = pending.pop(frame).argmax(axis=0)
    assert labels is not None and not pending  # every frame is covered and decided
    return labels


def _weighted_windows(
    num_frames: int, windows: Sequence[tuple[int, int]], infer: Infer
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(start, stop, weighted probabilities, weights) per window, in the order given, after
    checking the plan (before any inference) and each window's logits."""
    _check_coverage(num_frames, windows)
    first: tuple[int, ...] | None = None  # (K, H, W) of the first window
    for start, stop in windows:
        logits = np.asarray(infer(start, stop))
        if logits.ndim != 4 or logits.shape[1] != stop - start:
            raise ValueError(
                f"infer({start}, {stop}) must return (K, {stop - start}, H, W) logits, "
                f"got shape {logits.shape}"
            )
        shape = (logits.shape[0], *logits.shape[2:])
        if first is None:
            first = shape
        elif shape != first:
            raise ValueError(
                f"infer({start}, {stop}) returned shape {logits.shape}, inconsistent with "
                f"the (K, H, W) = {first} of earlier windows"
            )
        weights = window_weights(stop - start)
        yield start, stop, _softmax(logits) * weights[None, :, None, None], weights


def _check_coverage(num_frames: int, windows: Sequence[tuple[int, int]]) -> None:
    """Every window inside the clip and every frame in some window, before any inference."""
    if num_frames < 1:
        raise ValueError(f"a clip has at least one frame, got num_frames={num_frames}")
    covered = np.zeros(num_frames, dtype=bool)
    for start, stop in windows:
        if not 0 <= start < stop <= num_frames:
            raise ValueError(f"window ({start}, {stop}) is not inside a clip of {num_frames}")
        covered[start:stop] = True
    if not covered.all():
        # checked before any inference: a bad plan should not cost a model run
        missing = np.flatnonzero(~covered)
        raise ValueError(f"no window covers frames {missing[:10].tolist()} of {num_frames}")


def argmax_labels(probs: np.ndarray) -> np.ndarray:
    """(T, H, W) uint8 class ids from (K, T, H, W) probabilities (or logits)."""
    if probs.ndim != 4:
        raise ValueError(f"probs must be (K, T, H, W), got shape {probs.shape}")
    if probs.shape[0] > 256:
        raise ValueError(f"uint8 labels hold 256 classes, got {probs.shape[0]}")
    return probs.argmax(axis=0).astype(np.uint8)


def segment_clip(num_frames: int, infer: Infer, *, window: int, overlap: int) -> np.ndarray:
    """(T, H, W) uint8 labels: ``plan_windows`` then ``stitch_labels``."""
    return stitch_labels(num_frames, plan_windows(num_frames, window, overlap), infer)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float32, copy=False)
    # subtracting the per-pixel maximum keeps exp() from overflowing on large logits
    exp = np.exp(logits - logits.max(axis=0, keepdims=True))
    return exp / exp.sum(axis=0, keepdims=True)
