"""What one live session may hold, from the settings, and what it costs when it opens.

A session's memory is charged to ``MEMORY_BUDGET_MB`` once, when it opens, for the largest
frames it may receive (``max_video_pixels``, scaled to its ``max_side``): growing it per
message would let a session fail halfway through; charging the worst case up front makes a
refusal fast and final (``overloaded``, close 1013).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ccnet.service.core.config import Settings

__all__ = ["SessionCost", "StreamLimits", "StreamOptions", "session_bytes"]

Output = Literal["mask", "overlay"]


@dataclass(frozen=True)
class StreamLimits:
    """The per-session bounds (``CCNET_STREAM_*`` settings and the clip-frame pixel limit)."""

    max_sessions: int
    queue_frames: int
    max_unsent: int
    idle_timeout_s: float
    max_frames: int
    max_duration_s: float
    max_frame_bytes: int
    max_bad_frames: int
    max_pixels: int
    max_side: int

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamLimits:
        return cls(
            max_sessions=settings.stream_max_sessions,
            queue_frames=settings.stream_queue_frames,
            max_unsent=settings.stream_max_unsent,
            idle_timeout_s=settings.stream_idle_timeout_s,
            max_frames=settings.stream_max_frames,
            max_duration_s=settings.stream_max_duration_s,
            max_frame_bytes=settings.stream_max_frame_bytes,
            max_bad_frames=settings.stream_max_bad_frames,
            max_pixels=settings.max_video_pixels,
            max_side=settings.max_video_side,
        )


@dataclass(frozen=True)
class StreamOptions:
    """A session's query options (validated by the route)."""

    output: Output = "mask"
    alpha: float = 0.5
    max_side: int = 512
    lookahead: int = 0


@dataclass(frozen=True)
class SessionCost:
    """Bytes a session may hold, by part (logged and sent in the ``ready`` message)."""

    window: int  # the ring buffer of frame states
    frames: int  # encoded frames waiting, and the one being decoded
    activations: int  # one window step's working memory
    outputs: int  # masks or overlays not sent yet, and frames kept for lookahead overlays

    @property
    def total(self) -> int:
        return self.window + self.frames + self.activations + self.outputs


def session_bytes(
    limits: StreamLimits,
    options: StreamOptions,
    *,
    state_bytes: int,
    window_frames: int,
    activation_per_pixel: float,
) -> SessionCost:
    """The worst case of one session (module docstring).

    Args:
        state_bytes: the ring buffer full of the largest frames (``StreamSegmenter.state_bytes``).
        window_frames: the model's clip length T.
        activation_per_pixel: resident bytes a forward pass adds per input voxel (measured
            by the served model at warm-up).
    """
    pixels = limits.max_pixels
    side = min(options.max_side, limits.max_side)
    scaled = min(pixels, side * side)
    decoded = 3 * pixels  # one RGB frame being decoded and prepared
    frames = (limits.queue_frames + 1) * limits.max_frame_bytes + 2 * decoded
    activations = math.ceil(activation_per_pixel * window_frames * scaled)
    per_output = 3 * pixels if options.output == "overlay" else pixels  # PNG/JPEG bound
    kept = (options.lookahead + 1) * decoded if options.output == "overlay" else 0
    return SessionCost(state_bytes, frames, activations, limits.max_unsent * per_output + kept)
