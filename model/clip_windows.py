"""Which windows of frames a video model runs on: one planner for training, evaluation and serving.

A CCNet3D sees ``window`` consecutive frames at a time. Every consumer of a clip asks the same
question — where do the windows start? — and they must agree, or the evaluation scores
something other than what the service returns and training skips frames that both of them
segment. The answer here:

- windows are ``stride`` frames apart, starting at frame 0;
- when the last regular window stops short of the clip's end, one more window is moved back
  to end exactly at the last frame (it is never cut short: the model runs on full windows, and
  no frame is left out);
- a clip of at most ``window`` frames is one window over the whole clip — except in training
  (``full_only``), where every sample of a batch must have ``window`` frames, so such a clip
  gives no window.

Training uses ``stride = clip_stride`` (how densely to sample), evaluation ``stride = window``
(each frame in one window, the last window's re-covered frames not scored again: see
``first_cover``), the service ``stride = window - overlap`` (neighbours share ``overlap``
frames, which it blends).
"""

from __future__ import annotations

__all__ = ["first_cover", "plan_windows"]


def plan_windows(
    num_frames: int, window: int, stride: int, *, full_only: bool = False
) -> list[tuple[int, int]]:
    """Half-open ``[start, stop)`` windows over ``range(num_frames)`` (module docstring).

    Args:
        num_frames: frames in the clip.
        window: frames per window (the model's T).
        stride: frames between window starts, 1..window for full coverage (a larger stride
            skips frames on purpose, and is allowed only with ``full_only``).
        full_only: training: only windows of exactly ``window`` frames (a shorter clip gives
            none), and ``num_frames = 0`` is allowed.

    Raises:
        ValueError: ``window`` or ``stride`` below 1, a stride that would leave frames
            uncovered where coverage is required, or an empty clip where one is not allowed.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 frame, got {window}")
    if stride < 1:
        raise ValueError(f"stride must be at least 1 frame, got {stride}")
    if not full_only:
        if stride > window:
            raise ValueError(f"stride {stride} > window {window} would leave frames uncovered")
        if num_frames < 1:
            raise ValueError(f"a clip has at least one frame, got num_frames={num_frames}")
        if num_frames <= window:
            return [(0, num_frames)]
    if num_frames < window:
        return []
    windows = [(start, start + window) for start in range(0, num_frames - window + 1, stride)]
    if windows[-1][1] < num_frames:
        windows.append((num_frames - window, num_frames))
    return windows


def first_cover(windows: list[tuple[int, int]]) -> list[list[bool]]:
    """For each window, which of its frames no earlier window covered (score each frame once).

    Windows are taken in the order given; with the evaluation plan (``stride = window``) only
    the last, moved-back window has frames that are not its own.
    """
    covered: set[int] = set()
    counted: list[list[bool]] = []
    for start, stop in windows:
        counted.append([frame not in covered for frame in range(start, stop)])
        covered.update(range(start, stop))
    return counted
