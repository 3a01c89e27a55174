"""What runs a CCNet3D one frame at a time: the split model behind ``StreamSegmenter``.

A ``StreamModel`` has two steps (``model.streaming`` explains the split): ``encode`` turns one
frame's pixels into its cached state, ``decode`` turns a window of states into one frame's
logits. Two implementations, so the live path runs where the clip path runs:

- ``TorchStreamModel``: the checkpoint's own modules in eager PyTorch (shares the weights of
  a loaded ``TorchBackend``, so a served model needs no second copy);
- ``OnnxStreamModel``: the two graphs of ``ccnet export stream`` (``stream_frame.onnx``,
  ``stream_window.onnx`` and their ``stream.json``) on ONNX Runtime.

Pixels are RGB float32 0..255, (3, H, W) padded to the stride; normalisation is inside (the
ONNX frame graph carries it, the torch model applies the checkpoint's), as for every backend.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ccnet.inference.backends.base import BackendError, InferenceBackend, ModelInfo, info_from_meta
from ccnet.inference.backends.threads import ThreadPolicy
from ccnet.model.streaming import STREAM_FORMAT, STREAM_SIDECAR

__all__ = [
    "STREAM_FORMAT",
    "STREAM_SIDECAR",
    "OnnxStreamModel",
    "StreamModel",
    "TorchStreamModel",
    "stream_model_for",
]

FrameState = Any  # opaque to the caller: whatever the model needs of one frame


class StreamModel(ABC):
    """One CCNet3D split into per-frame and per-window steps (not thread-safe per session;
    several sessions may share one model)."""

    name: str

    def __init__(self, info: ModelInfo) -> None:
        if info.kind != "video":
            raise ValueError(f"{info.name}: an image model; streaming needs a CCNet3D")
        self.info = info
        self.window = info.window or 4

    @abstractmethod
    def encode(self, pixels: np.ndarray) -> FrameState:
        """One frame's cached state from (3, Hp, Wp) float32 RGB 0..255."""

    @abstractmethod
    def decode(self, states: Sequence[FrameState], target: int) -> np.ndarray:
        """(K, Hp, Wp) float32 logits of ``states[target]`` with ``states`` as its window."""

    @abstractmethod
    def state_bytes(self, height: int, width: int) -> int:
        """Bytes one frame's state holds at a padded (height, width): what a session's
        ring buffer costs, charged to the memory budget when a session opens."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions (ONNX Runtime); the torch model shares a backend's weights."""


class TorchStreamModel(StreamModel):
    """Eager PyTorch over a CCNet3D (fp32, or bf16 autocast when ``precision`` says so).

    Args:
        info: the model's description.
        model: the CCNet3D (eval mode; its weights are shared, not copied).
        normalization: the checkpoint's input normalisation.
        device: where the model's weights are.
        precision: "fp32" or "bf16" (CPU autocast), as the backend it came from runs.
        thread_policy: intra-op threads per step from the load, as the backends use it.
    """

    name = "torch"

    def __init__(
        self,
        info: ModelInfo,
        model: Any,
        normalization: Any,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        thread_policy: ThreadPolicy | None = None,
    ) -> None:
        super().__init__(info)
        import torch

        from ccnet.model.streaming import FrameEncoder, WindowDecoder

        if getattr(getattr(model, "config", None), "output_stride", 8) != 8:
            raise ValueError(f"{info.name}: streaming needs output stride 8")
        self._torch = torch
        self._device = torch.device(device)
        self._encoder = FrameEncoder(model).eval()
        self._decoder = WindowDecoder(model).eval()
        self._normalization = normalization
        self._precision = precision
        self._policy = thread_policy
        head = model.head
        self._channels = (
            model.backbone.stage_channels["layer4"],
            head.conva.conv.out_channels,
            head.recurrence,
        )

    @classmethod
    def from_backend(cls, backend: InferenceBackend) -> TorchStreamModel:
        """Share a loaded ``TorchBackend``'s model (the service's served clip model)."""
        return cls(
            backend.info,
            backend.model,  # type: ignore[attr-defined]
            backend.normalization,  # type: ignore[attr-defined]
            device=backend.device,
            precision=backend.precision,
            thread_policy=backend.thread_policy,
        )

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        torch = self._torch
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self._policy is not None:
                torch.set_num_threads(stack.enter_context(self._policy.slot()))
            bf16 = self._precision == "bf16"
            stack.enter_context(torch.autocast(self._device.type, torch.bfloat16, enabled=bf16))
            yield

    def encode(self, pixels: np.ndarray) -> FrameState:
        x = self._torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None]
        with self._step():
            x = self._normalization.normalize(x.to(self._device), channel_dim=1)
            return self._encoder(x)

    def decode(self, states: Sequence[FrameState], target: int) -> np.ndarray:
        torch = self._torch
        with self._step():
            stacked = [torch.stack([s[i] for s in states], 2) for i in range(1, len(states[0]))]
            index = torch.tensor([target], device=self._device)
            logits = self._decoder(states[target][0], *stacked, index)
        return logits[0].float().cpu().numpy()

    def state_bytes(self, height: int, width: int) -> int:
        channels, inter, recurrence = self._channels
        cells = (height // 8) * (width // 8)
        per_cell = channels + inter + (2 * max(inter // 8, 1) + inter if recurrence else 0)
        return 4 * per_cell * cells


class OnnxStreamModel(StreamModel):
    """The two graphs of ``ccnet export stream`` on ONNX Runtime's CPU provider.

    Args:
        sidecar: the export's ``stream.json`` (the graphs lie beside it).
        threads: intra-op threads per session (0: ONNX Runtime's default).
        name: the model's name in results (default: the export's).
    """

    name = "onnxruntime"

    def __init__(self, sidecar: str | Path, *, threads: int = 0, name: str | None = None) -> None:
        path = Path(sidecar)
        if path.is_dir():
            path = path / STREAM_SIDECAR
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise BackendError(f"{path}: not a readable stream export: {error}") from None
        if meta.get("format") != STREAM_FORMAT:
            raise BackendError(f"{path}: not a stream export (format {meta.get('format')!r})")
        super().__init__(info_from_meta(name, meta, path))
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendError("the onnxruntime stream model needs onnxruntime") from error
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads

        def session(file: str) -> Any:
            return onnxruntime.InferenceSession(
                str(path.parent / file), sess_options=options, providers=["CPUExecutionProvider"]
            )

        self._frame = session(meta["graphs"]["frame"])
        self._window = session(meta["graphs"]["window"])
        self._states = list(meta["states"])
        self._state_channels = [int(c) for c in meta["state_channels"]]
        self._input = self._frame.get_inputs()[0].name

    def encode(self, pixels: np.ndarray) -> FrameState:
        feed = {self._input: np.ascontiguousarray(pixels[None], dtype=np.float32)}
        return self._frame.run(self._states, feed)

    def decode(self, states: Sequence[FrameState], target: int) -> np.ndarray:
        feed = {"features": states[target][0]}
        for i, state in enumerate(self._states[1:], start=1):
            feed[state] = np.stack([s[i] for s in states], axis=2)
        feed["target"] = np.array([target], dtype=np.int64)
        (logits,) = self._window.run(["logits"], feed)
        return np.asarray(logits[0], dtype=np.float32)

    def state_bytes(self, height: int, width: int) -> int:
        return 4 * sum(self._state_channels) * (height // 8) * (width // 8)

    def close(self) -> None:
        self._frame = self._window = None


def stream_model_for(backend: InferenceBackend) -> StreamModel:
    """The stream model of a loaded clip backend: its torch model shared, or for an ONNX
    export the stream export beside it (``stream.json`` in the same folder).

    Raises:
        BackendError: the backend has no streaming form (the message says what to do).
    """
    if backend.name == "torch":
        return TorchStreamModel.from_backend(backend)
    source = Path(backend.info.source)
    beside = source.parent / STREAM_SIDECAR
    if backend.name == "onnxruntime" and beside.is_file():
        return OnnxStreamModel(beside, name=backend.info.name)
    raise BackendError(
        f"{backend.info.name}: live streaming runs on torch, or on onnxruntime with a "
        f"stream export beside the model (ccnet export stream); not on {backend.name}"
    )


def timed(function: Any, *args: Any) -> tuple[Any, float]:
    """``function(*args)`` and its wall time in milliseconds."""
    began = time.perf_counter()
    result = function(*args)
    return result, (time.perf_counter() - began) * 1e3
