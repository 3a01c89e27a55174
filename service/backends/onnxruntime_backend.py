"""ONNX Runtime backend: an exported ``model.onnx`` (+ ``model.json``) on the best provider.

Provider order is TensorRT, CUDA, CPU, keeping only those this onnxruntime build offers, so
the same code serves the CPU wheel and onnxruntime-gpu. The criss-cross attention nodes run
through the ONNX local function stored in the model on every provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import BackendError, InferenceBackend, ModelInfo

__all__ = ["OnnxRuntimeBackend", "available_providers"]

_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers() -> list[str]:
    """The providers this onnxruntime build offers, in the order we prefer them."""
    import onnxruntime

    offered = set(onnxruntime.get_available_providers())
    return [p for p in _PREFERRED if p in offered]


class OnnxRuntimeBackend(InferenceBackend):
    """An ONNX export run by ONNX Runtime.

    Args:
        info: the model's description (from the sidecar).
        path: the ``.onnx`` file.
        device: "cpu" keeps to the CPU provider; "auto"/"cuda" try GPU providers first.
        threads: intra-op threads (0 = ONNX Runtime's default).
        providers: explicit provider list, overriding ``device``.
    """

    name = "onnxruntime"

    def __init__(
        self,
        info: ModelInfo,
        path: str | Path,
        *,
        device: str = "auto",
        threads: int = 0,
        providers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(info)
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendError(
                "the onnxruntime backend needs onnxruntime (pip install 'ccnet-stack[export]')"
            ) from error
        chosen = list(providers) if providers else available_providers()
        if device == "cpu":
            chosen = ["CPUExecutionProvider"]
        elif device == "cuda" and not any(p != "CPUExecutionProvider" for p in chosen):
            raise BackendError("device 'cuda' was asked for, but onnxruntime has no GPU provider")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # provider fallbacks are reported by us, not as noise
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=chosen
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise BackendError(f"{path}: ONNX Runtime cannot load it: {error}") from error
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._providers = self.session.get_providers()

    @property
    def device(self) -> str:
        return "cuda" if self._providers[0] != "CPUExecutionProvider" else "cpu"

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses, best first."""
        return list(self._providers)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        (logits,) = self.session.run([self.output_name], feed)
        return np.asarray(logits, dtype=np.float32)
