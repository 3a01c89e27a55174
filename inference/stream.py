"""Live segmentation with CCNet3D: push frames one at a time, get each frame's mask back.

    from ccnet.inference.stream import StreamSegmenter
    live = StreamSegmenter.from_file("ccnet3d-tiny")          # causal: no delay
    for index, frame in enumerate(camera):                     # (H, W, 3) uint8 RGB
        for result in live.push(frame):
            show(result.frame, result.mask)
    for result in live.flush():                                # the frames still pending
        ...

Each frame runs the backbone once; its state waits in a ring buffer of the model's clip length
T, and the head runs over the buffered window for one frame only (``model.streaming``). Why a
second path next to ``ClipSegmenter``: re-running the whole window per frame costs about T×.

Context rules (the issue left them to us; the service states them in its README section):

- Causal (``lookahead=0``, the default): frame t's mask comes back from ``push(t)`` and uses
  frames t−T+1 … t, fewer at the start. It equals ``ClipSegmenter`` run on exactly those
  frames (the last frame of that clip) up to float rounding.
- ``lookahead=k`` (0 ≤ k < T): frame t's mask comes back from ``push(t + k)`` with context
  t+k−T+1 … t+k; ``flush`` answers the last k frames with the window that ends at the last one.
- The window is the last T frames *pushed*: a caller that drops frames (the service under
  load) simply never pushes them, so a window may span a gap; it never holds a dropped frame
  and never waits for one.
- A frame of another size than the window's starts a new window: the frames still waiting for
  lookahead are answered first with the old window.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ccnet.inference.pipeline import labels_from_logits, prepare_image
from ccnet.inference.stream_models import FrameState, StreamModel, timed

__all__ = ["StreamMask", "StreamSegmenter"]


@dataclass(frozen=True)
class StreamMask:
    """One frame's answer."""

    frame: int  # the caller's index of the frame (push order by default)
    mask: np.ndarray  # (H, W) uint8 class ids at the frame's size
    context: tuple[int, int]  # first and last frame index of the window it saw (inclusive)
    encode_ms: float  # this frame's backbone (and per-frame head) time
    decode_ms: float  # the window step that produced this mask


@dataclass
class _Buffered:
    index: int
    state: FrameState
    encode_ms: float


class StreamSegmenter:
    """Incremental CCNet3D over a stream of frames (module docstring).

    Args:
        model: the split model (``TorchStreamModel`` or ``OnnxStreamModel``).
        max_side: frames whose long side exceeds this are scaled down for inference.
        lookahead: frames to wait for before answering one (0 .. T-1).
    """

    def __init__(self, model: StreamModel, *, max_side: int = 512, lookahead: int = 0) -> None:
        if max_side < 8:
            raise ValueError(f"max_side must be >= 8, got {max_side}")
        if not 0 <= lookahead < model.window:
            raise ValueError(
                f"lookahead must be in [0, {model.window}) for a {model.window}-frame model, "
                f"got {lookahead}"
            )
        self.model = model
        self.max_side = max_side
        self.lookahead = lookahead
        self.window = model.window
        self._buffer: deque[_Buffered] = deque(maxlen=self.window)
        self._pending = 0  # buffered frames not answered yet (at most lookahead)
        self._geometry: tuple[tuple[int, int], tuple[int, int]] | None = None  # size, scaled
        self._pushed = 0

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        max_side: int = 512,
        lookahead: int = 0,
        device: str = "cpu",
        threads: int = 0,
        name: str | None = None,
    ) -> StreamSegmenter:
        """A CCNet3D checkpoint or ``"ccnet3d-tiny"`` on torch, or a stream export
        (``stream.json`` or its folder, from ``ccnet export stream``) on ONNX Runtime."""
        from pathlib import Path

        from ccnet.inference.stream_models import STREAM_SIDECAR, OnnxStreamModel

        candidate = Path(path)
        if candidate.is_dir() or candidate.name == STREAM_SIDECAR:
            model: StreamModel = OnnxStreamModel(candidate, threads=threads, name=name)
        else:
            from ccnet.inference.backends.base import info_from_meta
            from ccnet.inference.demo import resolve_model_file
            from ccnet.inference.stream_models import TorchStreamModel
            from ccnet.model import Normalization, load_checkpoint

            file = resolve_model_file(path)
            network, meta = load_checkpoint(file)
            if threads:
                import torch

                torch.set_num_threads(threads)
            info = info_from_meta(name, meta, file)
            normalization = Normalization(**meta["normalization"])
            network = network.eval().to(device)
            model = TorchStreamModel(info, network, normalization, device=device)
        return cls(model, max_side=max_side, lookahead=lookahead)

    @property
    def classes(self) -> list[str]:
        return self.model.info.classes

    @property
    def palette(self) -> list[list[int]]:
        return self.model.info.palette

    def state_bytes(self, height: int, width: int) -> int:
        """Bytes the ring buffer holds when full of frames of this input size."""
        from ccnet.inference.pipeline import STRIDE, scaled_size

        h, w = scaled_size(height, width, self.max_side)
        padded = (h + (-h % STRIDE), w + (-w % STRIDE))
        return self.window * self.model.state_bytes(*padded)

    def push(self, frame: np.ndarray, index: int | None = None) -> list[StreamMask]:
        """Add one (H, W, 3) uint8 RGB frame; the masks it completes (0 or 1, or more when
        its size starts a new window), oldest first.

        Raises:
            ValueError: not an (H, W, 3) uint8 array (the stream is unchanged).
        """
        index = self._pushed if index is None else index
        prepared = prepare_image(frame, self.max_side)  # validates the array
        geometry = (prepared.size, prepared.scaled)
        answered = []
        if self._geometry is not None and geometry != self._geometry:
            answered = self.flush()
        self._geometry = geometry
        state, encode_ms = timed(self.model.encode, prepared.pixels)
        self._pushed += 1
        self._buffer.append(_Buffered(index, state, encode_ms))
        self._pending += 1
        if self._pending > self.lookahead:
            answered.append(self._answer(len(self._buffer) - self._pending))
        return answered

    def flush(self) -> list[StreamMask]:
        """Answer the frames still waiting for lookahead and start a new window."""
        answered = [self._answer(len(self._buffer) - self._pending) for _ in range(self._pending)]
        self._buffer.clear()
        self._geometry = None
        return answered

    def _answer(self, position: int) -> StreamMask:
        """The mask of the buffered frame at ``position`` with the whole buffer as context."""
        assert self._geometry is not None
        buffered: Sequence[_Buffered] = list(self._buffer)
        logits, decode_ms = timed(self.model.decode, [b.state for b in buffered], position)
        size, scaled = self._geometry
        mask = labels_from_logits(logits, scaled, size)
        self._pending -= 1
        target = buffered[position]
        context = (buffered[0].index, buffered[-1].index)
        return StreamMask(target.index, mask, context, target.encode_ms, decode_ms)

    def close(self) -> None:
        """Release the model's sessions."""
        self.model.close()
