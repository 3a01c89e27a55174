"""``EngineRunner``: one deserialised TensorRT engine, run on numpy batches.

The one place that talks to an engine at run time: ``ccnet export tensorrt`` checks the engine
it has just built through it, and the service's tensorrt backend serves through it. I/O buffers
are PyTorch CUDA tensors (the GPU image has a CUDA build of torch), so no second CUDA binding is
needed. One execution context and one stream: callers serialise their calls (one thread).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["EngineError", "EngineRunner"]


class EngineError(ValueError):
    """The engine cannot be deserialised here, or a run fails or is refused."""


class EngineRunner:
    """Runs a serialised engine (``engine.plan`` bytes) on its first optimisation profile.

    Args:
        trt: the ``tensorrt`` module (``export.runtime.availability.require_tensorrt()``).
        serialized: the engine (bytes or TensorRT's host memory object).
        label: names the engine in error messages (its path, or "the engine just built").

    Raises:
        EngineError: TensorRT cannot deserialise it (another TensorRT version or GPU type, or
            the plugin library is not loaded), or its I/O is not one float input and output.
    """

    def __init__(self, trt: ModuleType, serialized: Any, *, label: str) -> None:
        import torch

        self._trt = trt
        self._torch = torch
        self.label = label
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise EngineError(
                f"{label}: TensorRT {trt.__version__} cannot deserialise this engine here "
                "(built by another TensorRT version or for another GPU type, or the plugin "
                "library is not loaded)"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise EngineError(f"{label}: expected one input and an output, got {names}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        types = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
        if hasattr(trt, "int64"):  # TensorRT 10+: an ArgMax mask output (`--output mask`)
            types[trt.int64] = torch.int64
        try:
            self._input_dtype = types[engine.get_tensor_dtype(self.input_name)]
            self._output_dtype = types[engine.get_tensor_dtype(self.output_name)]
        except KeyError:
            raise EngineError(f"{label}: unsupported input/output element type") from None
        low, _, high = engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_shape, self.max_shape = tuple(low), tuple(high)
        self.stream = torch.cuda.Stream()

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether ``shape`` lies inside the engine's optimisation profile."""
        return len(shape) == len(self.max_shape) and all(
            lo <= s <= hi for s, lo, hi in zip(shape, self.min_shape, self.max_shape, strict=True)
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The engine's first output for ``batch`` (float32 numpy in; float32 logits out, or the
        integer mask of a ``--output mask`` export).

        Raises:
            EngineError: ``batch`` lies outside the profile, or TensorRT fails to run.
        """
        torch = self._torch
        if not self.accepts(tuple(batch.shape)):
            raise EngineError(
                f"input {tuple(batch.shape)} is outside the engine's profile "
                f"{self.min_shape}..{self.max_shape}"
            )
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda()
            x = x.to(self._input_dtype)
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            y = torch.empty(
                tuple(self.context.get_tensor_shape(self.output_name)),
                dtype=self._output_dtype,
                device="cuda",
            )
            self.context.set_tensor_address(self.output_name, y.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineError(f"{self.label}: TensorRT failed to run the engine")
            if y.dtype == torch.float16:
                y = y.float()
            out = y.cpu().numpy()  # the copy waits for the stream
        return out
