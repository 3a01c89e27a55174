"""Inference backends behind one interface (``InferenceBackend``) and the loader that picks one.

The backend modules import their runtimes lazily, so a CPU install without onnxruntime or
TensorRT can still serve with PyTorch.
"""

from .base import BackendError, InferenceBackend, ModelInfo
from .loading import BACKENDS, load_backend

__all__ = ["BACKENDS", "BackendError", "InferenceBackend", "ModelInfo", "load_backend"]
