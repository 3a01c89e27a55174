"""Inference backends behind one interface (``InferenceBackend``) and the loader that picks one.

The backend modules import their runtimes lazily, so a CPU install without onnxruntime or
TensorRT can still run PyTorch; ``load_backend`` is loaded on first use (it pulls in the
precision gate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ccnet.inference.backends.base import BackendError, InferenceBackend, ModelInfo
from ccnet.inference.options import BACKENDS

if TYPE_CHECKING:
    from ccnet.inference.backends.loading import load_backend

__all__ = ["BACKENDS", "BackendError", "InferenceBackend", "ModelInfo", "load_backend"]


def __getattr__(name: str) -> Any:
    if name == "load_backend":
        from ccnet.inference.backends.loading import load_backend

        return load_backend
    raise AttributeError(f"module 'ccnet.inference.backends' has no attribute {name!r}")
