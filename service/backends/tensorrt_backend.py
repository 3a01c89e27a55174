"""TensorRT backend: an engine built by ``ccnet export tensorrt`` with our attention plugin.

I/O buffers are PyTorch CUDA tensors (the GPU image has a CUDA build of torch), so no second
CUDA binding is needed. One execution context serves the one worker thread that calls
``infer``; shapes outside the engine's optimisation profile are refused up front.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .base import BackendError, InferenceBackend, ModelInfo

__all__ = ["TensorRTBackend"]


class TensorRTBackend(InferenceBackend):
    """A serialized TensorRT engine (``engine.plan`` + ``engine.json``).

    Args:
        info: the model's description (from the engine sidecar).
        path: the engine file.
        plugin: the criss-cross attention plugin library (loaded before deserializing).
    """

    name = "tensorrt"
    thread_safe = False  # one execution context and stream

    def __init__(self, info: ModelInfo, path: str | Path, *, plugin: Path | None) -> None:
        super().__init__(info)
        from export.engine import require_tensorrt

        try:
            trt = require_tensorrt()
            import torch
        except (ValueError, ImportError) as error:
            raise BackendError(str(error)) from error
        if not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs a CUDA device visible to PyTorch")
        self._torch = torch
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        if plugin is not None and trt.get_plugin_registry().load_library(str(plugin)) is None:
            raise BackendError(f"{plugin}: TensorRT could not load this plugin library")
        runtime = trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise BackendError(f"{path}: TensorRT cannot deserialize this engine here")
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_name = next(
            n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        )
        self.output_name = next(n for n in names if n != self.input_name)
        types = {trt.float32: torch.float32, trt.float16: torch.float16}
        self._input_dtype = types[engine.get_tensor_dtype(self.input_name)]
        self._output_dtype = types[engine.get_tensor_dtype(self.output_name)]
        low, _, high = engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_shape, self.max_shape = tuple(low), tuple(high)
        self.stream = torch.cuda.Stream()

    @property
    def device(self) -> str:
        return "cuda"

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether ``shape`` lies inside the engine's optimisation profile."""
        return len(shape) == len(self.max_shape) and all(
            lo <= s <= hi for s, lo, hi in zip(shape, self.min_shape, self.max_shape, strict=True)
        )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        if not self.accepts(batch.shape):
            raise BackendError(
                f"input {batch.shape} is outside the engine's profile "
                f"{self.min_shape}..{self.max_shape}"
            )
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda()
            x = x.to(self._input_dtype)
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            shape = tuple(self.context.get_tensor_shape(self.output_name))
            y = torch.empty(shape, dtype=self._output_dtype, device="cuda")
            self.context.set_tensor_address(self.output_name, y.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError("TensorRT failed to run the engine")
            out = y.float().cpu().numpy()  # the copy waits for the stream
        return out


def read_engine_sidecar(path: str | Path) -> dict[str, Any]:
    """The ``engine.json`` written beside an engine by ``ccnet export tensorrt``."""
    side = Path(path).with_suffix(".json")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as error:
        raise BackendError(f"{side}: cannot read the engine's sidecar: {error}") from error
