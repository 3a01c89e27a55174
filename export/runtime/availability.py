"""Whether TensorRT can be used here, and which of its Python modules to use.

Two needs, two answers. Building or running an engine needs the full ``tensorrt`` module and a
CUDA GPU (``require_tensorrt``). Loading the plugin library into a plugin registry needs only a
TensorRT runtime, which may be the lean one from PyPI (``tensorrt-lean-cu13-bindings``, module
``tensorrt_lean_bindings``): it loads on a machine without a GPU, which is how the plugin's
registration is tested in CI (``plugin_runtime``).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from types import ModuleType

__all__ = [
    "PLUGIN_RUNTIMES",
    "gpu_name",
    "plugin_runtime",
    "require_tensorrt",
    "tensorrt_unavailable_reason",
]

#: The TensorRT Python modules that carry a plugin registry, the full runtime first.
PLUGIN_RUNTIMES = ("tensorrt", "tensorrt_bindings", "tensorrt_lean", "tensorrt_lean_bindings")


def tensorrt_unavailable_reason() -> str | None:
    """Why an engine cannot be built or run here (None when TensorRT and a CUDA GPU are)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return (
            "TensorRT is not installed (its Python package `tensorrt`): build engines on a "
            "machine with an NVIDIA GPU and TensorRT 10+, e.g. the GPU image "
            "(`docker compose --profile gpu ...`); the ONNX file runs anywhere with ONNX Runtime"
        )
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "PyTorch is needed to run the engine"
    if not torch.cuda.is_available():
        return (
            "TensorRT is installed but no CUDA GPU is visible (torch.cuda.is_available() is "
            "False): an engine is built for, and runs on, the GPU that will serve it"
        )
    return None


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module; ValueError with the reason when it cannot be used here."""
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise ValueError(reason)
    import tensorrt

    return tensorrt


@lru_cache(maxsize=1)
def plugin_runtime() -> ModuleType:
    """The first importable TensorRT module of ``PLUGIN_RUNTIMES`` (full, else lean).

    Raises:
        ImportError: no TensorRT runtime is installed.
    """
    for name in PLUGIN_RUNTIMES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "get_plugin_registry"):
            return module
    raise ImportError(
        "no TensorRT runtime is installed: `tensorrt` (GPU image) or the lean runtime "
        "(pip install tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings)"
    )


def gpu_name() -> str:
    """The name of the current CUDA device (part of an engine's cache key).

    Raises:
        ValueError: no CUDA device is visible.
    """
    import torch

    if not torch.cuda.is_available():
        raise ValueError("no CUDA GPU is visible")
    return str(torch.cuda.get_device_name())
