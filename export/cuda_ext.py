"""Criss-cross attention CUDA kernels for PyTorch: the TensorRT plugin's kernels as an extension.

The extension is compiled on first use from the plugin's own sources
(``export/tensorrt/crissCrossAttentionPlugin/crissCrossAttentionKernel.cu`` and the small
binding ``crissCrossAttentionTorch.cpp``) with ``torch.utils.cpp_extension.load``, so the
numbers PyTorch sees are the numbers the TensorRT engine computes. The build goes to a cache
directory (``$CCNET_EXTENSIONS_DIR``, else ``$XDG_CACHE_HOME/ccnet/torch_extensions`` or
``~/.cache/ccnet/torch_extensions``), one subfolder per torch / CUDA version; later processes
reuse it. It needs a CUDA build of PyTorch, a visible GPU, nvcc and ninja.

The ops are forward-only (inference): fp32 and fp16, 2D ``(B, C, H, W)`` and 3D
``(B, C, T, H, W)``, the same contract as ``model.cca.criss_cross_attention`` and
``model.cca3d.criss_cross_attention_3d`` (no gamma, no residual).

Usage:
    from ccnet.export.cuda_ext import enable_cuda_kernels, has_cuda_kernels
    if has_cuda_kernels():
        enable_cuda_kernels()   # model.config routes CUDA tensors to these kernels
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from ccnet.model.axial import check_axial_inputs

__all__ = [
    "AGGREGATIONS",
    "SOURCE_DIR",
    "CudaKernelsUnavailableError",
    "build_directory",
    "criss_cross_attention_3d_cuda",
    "criss_cross_attention_cuda",
    "enable_cuda_kernels",
    "has_cuda_kernels",
    "load_extension",
]

#: The plugin folder: kernels, math header, PyTorch binding (shared with the TensorRT plugin).
SOURCE_DIR = Path(__file__).resolve().parent / "tensorrt" / "crissCrossAttentionPlugin"
_SOURCES = ("crissCrossAttentionKernel.cu", "crissCrossAttentionTorch.cpp")
_EXTENSION_NAME = "ccnet_cca_cuda"

Aggregation = Literal["auto", "simt", "tensor_core", "tf32"]
#: Aggregation kernels (``ccnet::cca::Aggregation``): ``auto`` uses tensor cores for fp16 on
#: sm_70+, CUDA cores otherwise; the explicit choices let tests check both paths on one GPU.
#: ``tf32`` (opt-in, sm_80+) also puts fp32 on tensor cores, rounding values and probabilities
#: to TF32: about 1e-3 of the largest output instead of the 1e-5 contract.
AGGREGATIONS: dict[str, int] = {"auto": 0, "simt": 1, "tensor_core": 2, "tf32": 3}


class CudaKernelsUnavailableError(RuntimeError):
    """The CUDA kernels cannot be built or loaded in this environment."""


def build_directory() -> Path:
    """Cache folder of the compiled extension for this torch / CUDA version."""
    root = os.environ.get("CCNET_EXTENSIONS_DIR")
    if root is None:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(cache) / "ccnet" / "torch_extensions")
    tag = f"torch{torch.__version__}-cuda{torch.version.cuda}".replace("+", "_")
    return Path(root) / tag


def _unavailable_reason() -> str | None:
    if torch.version.cuda is None:
        return f"this PyTorch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "nvcc was not found (set CUDA_HOME to the CUDA toolkit)"
    return None


@functools.cache
def _load(verbose: bool) -> ModuleType:
    reason = _unavailable_reason()
    if reason is not None:
        raise CudaKernelsUnavailableError(f"CUDA toolkit/GPU not available: {reason}")
    from torch.utils.cpp_extension import load

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    flags = ["-O3", "-std=c++17"]
    try:
        return load(
            name=_EXTENSION_NAME,
            sources=[str(SOURCE_DIR / name) for name in _SOURCES],
            extra_include_paths=[str(SOURCE_DIR)],
            extra_cflags=flags,
            extra_cuda_cflags=flags,
            build_directory=str(directory),
            verbose=verbose,
        )
    except (OSError, RuntimeError) as exc:  # compiler missing, build error, ninja absent
        raise CudaKernelsUnavailableError(
            f"building the criss-cross attention CUDA extension in {directory} failed: {exc}"
        ) from exc


def load_extension(verbose: bool = False) -> ModuleType:
    """Build (first call in a fresh cache: a minute or two) and import the extension.

    Raises:
        CudaKernelsUnavailableError: "CUDA toolkit/GPU not available: ..." without CUDA, or
            the compiler's message when the build fails.
    """
    return _load(verbose)


@functools.cache
def has_cuda_kernels() -> bool:
    """True when the extension builds and loads here (the first call may compile it)."""
    try:
        load_extension()
    except CudaKernelsUnavailableError:
        return False
    return True


def _run(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spatial_dims: int,
    op: str,
    aggregation: Aggregation,
    recompute_energies: bool,
) -> Tensor:
    check_axial_inputs(q, k, v, spatial_dims=spatial_dims, op=op)
    if q.device.type != "cuda" or k.device != q.device or v.device != q.device:
        devices = f"{q.device}, {k.device}, {v.device}"
        raise ValueError(f"{op}: q, k, v must be on one CUDA device, got {devices}")
    if q.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"{op}: the CUDA kernels take float32 or float16, got {q.dtype}")
    if aggregation not in AGGREGATIONS:
        choices = ", ".join(AGGREGATIONS)
        raise ValueError(f"{op}: aggregation must be one of {choices}, got {aggregation!r}")
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError(
            f"{op}: the CUDA kernels are forward-only (inference); use the reference "
            "implementation when gradients are needed"
        )
    return load_extension().forward(q, k, v, AGGREGATIONS[aggregation], recompute_energies)


def criss_cross_attention_cuda(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    aggregation: Aggregation = "auto",
    recompute_energies: bool = False,
) -> Tensor:
    """2D criss-cross attention on the GPU (forward only).

    Args:
        q: queries (B, Cq, H, W), CUDA, float32 or float16.
        k: keys (B, Cq, H, W).
        v: values (B, C, H, W).
        aggregation: value-aggregation kernel, see ``AGGREGATIONS``.
        recompute_energies: compute the energies twice instead of keeping whole rows in
            shared memory (chosen automatically for very long rows; for tests).

    Returns:
        (B, C, H, W) contiguous, the dtype of the inputs.
    """
    return _run(q, k, v, 2, "criss_cross_attention_cuda", aggregation, recompute_energies)


def criss_cross_attention_3d_cuda(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    aggregation: Aggregation = "auto",
    recompute_energies: bool = False,
) -> Tensor:
    """3D criss-cross attention on the GPU (forward only).

    Args:
        q: queries (B, Cq, T, H, W), CUDA, float32 or float16.
        k: keys (B, Cq, T, H, W).
        v: values (B, C, T, H, W).
        aggregation: value-aggregation kernel, see ``AGGREGATIONS``.
        recompute_energies: see ``criss_cross_attention_cuda``.

    Returns:
        (B, C, T, H, W) contiguous, the dtype of the inputs.
    """
    return _run(q, k, v, 3, "criss_cross_attention_3d_cuda", aggregation, recompute_energies)


def enable_cuda_kernels() -> None:
    """Build the extension and register its ops with ``model.config`` for CUDA tensors.

    Raises:
        CudaKernelsUnavailableError: without CUDA, or when the build fails (nothing is
            registered then, so the model keeps its PyTorch paths).
    """
    load_extension()
    from ccnet.model.config import register_cuda_implementation

    register_cuda_implementation(criss_cross_attention_cuda, criss_cross_attention_3d_cuda)
