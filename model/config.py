"""Implementation switches for the criss-cross attention op.

One place decides which implementation of the op runs, in the spirit of timm's
``layers/config.py``: a process-wide default read from the ``CCNET_CCA_IMPL`` environment
variable, a setter, and a context manager for scoped changes (tests, export, benchmarks).

Implementations:

``reference``
    Plain PyTorch: matmuls over axis-moved views, one joint softmax. Differentiable, easy to
    read, and exportable to standard ONNX ops. This is what tracing and export always use.
``fast``
    The same math arranged for speed on CPU: the operands are brought to channels-last memory
    once (a cheap, vectorised conversion), every product is then a strided batched GEMM with no
    hidden copies, and without autograd the per-axis results are accumulated in place.
``cuda``
    Native CUDA kernels (the same ones the TensorRT plugin runs), forward only. They live with
    the plugin sources and are registered at run time by ``export.cuda_ext.enable_cuda_kernels``
    through ``register_cuda_implementation``, so this package never imports the export code.
``auto`` (default)
    ``cuda`` for CUDA tensors without autograd when kernels are registered, else ``fast`` in
    eager mode; ``reference`` whenever the op is being traced, scripted, exported or compiled,
    because the fast path's Python-level loops and in-place updates do not belong in a graph.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "CCA_IMPLEMENTATIONS",
    "CcaImplementation",
    "cca_implementation",
    "cuda_op",
    "get_cca_implementation",
    "has_cuda_implementation",
    "register_cuda_implementation",
    "resolve_cca_implementation",
    "set_cca_implementation",
]

CcaImplementation = Literal["auto", "reference", "fast", "cuda"]
CCA_IMPLEMENTATIONS: tuple[str, ...] = ("auto", "reference", "fast", "cuda")
Op = Callable[[Tensor, Tensor, Tensor], Tensor]


def _validated(name: str) -> CcaImplementation:
    if name not in CCA_IMPLEMENTATIONS:
        raise ValueError(
            f"unknown criss-cross attention implementation {name!r}; "
            f"choose one of {', '.join(CCA_IMPLEMENTATIONS)}"
        )
    return name  # type: ignore[return-value]


_implementation: CcaImplementation = _validated(os.environ.get("CCNET_CCA_IMPL", "auto"))


def get_cca_implementation() -> CcaImplementation:
    """The configured implementation (possibly ``auto``)."""
    return _implementation


def set_cca_implementation(name: str) -> None:
    """Set the process-wide implementation of the criss-cross attention op."""
    global _implementation
    _implementation = _validated(name)


@contextlib.contextmanager
def cca_implementation(name: str) -> Iterator[None]:
    """Use ``name`` inside the ``with`` block, then restore the previous choice."""
    previous = get_cca_implementation()
    set_cca_implementation(name)
    try:
        yield
    finally:
        set_cca_implementation(previous)


def _in_graph_capture() -> bool:
    """True while TorchScript, ONNX export or torch.compile/export is capturing a graph."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


_cuda_ops: dict[int, Op] = {}
_CUDA_KERNEL_DTYPES = (torch.float32, torch.float16)  # what the kernels are compiled for


def register_cuda_implementation(op2d: Op, op3d: Op) -> None:
    """Make native CUDA kernels available as the ``cuda`` implementation (2D and 3D ops)."""
    _cuda_ops[2] = op2d
    _cuda_ops[3] = op3d


def has_cuda_implementation() -> bool:
    """True once CUDA kernels were registered."""
    return bool(_cuda_ops)


def cuda_op(spatial_dims: int) -> Op:
    """The registered CUDA op for 2 or 3 spatial dims; RuntimeError if none was registered."""
    try:
        return _cuda_ops[spatial_dims]
    except KeyError:
        raise RuntimeError(
            "the 'cuda' criss-cross attention implementation was selected but no CUDA kernels "
            "are registered: call export.cuda_ext.enable_cuda_kernels() on a machine with CUDA"
        ) from None


def _operand_dtype(t: Tensor) -> torch.dtype:
    """The dtype ``t`` has as an operand under the current autocast state of its device."""
    device = t.device.type
    if (
        t.dtype == torch.float32
        and torch.amp.is_autocast_available(device)
        and torch.is_autocast_enabled(device)
    ):
        return torch.get_autocast_dtype(device)
    return t.dtype


def resolve_cca_implementation(
    *tensors: Tensor,
) -> Literal["reference", "fast", "cuda"]:
    """The concrete implementation to run now for ``tensors`` (``auto`` resolved).

    The one place the choice is made; each call of the op or of a block asks once.

    The CUDA kernels compute the forward pass only, in float32 and float16, so ``auto`` picks
    them only for such CUDA tensors when autograd is not recording them. ``tensors`` are the
    op's operands, or a block's input and parameters (what its q, k, v are made from): a
    float32 tensor counts in the autocast dtype while autocast is on, as the projections would
    produce it, and any tensor that requires a gradient makes the operands require one.
    """
    if _in_graph_capture():
        return "reference"
    if _implementation != "auto":
        return _implementation
    if (
        _cuda_ops
        and tensors
        and all(t.is_cuda and _operand_dtype(t) in _CUDA_KERNEL_DTYPES for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    ):
        return "cuda"
    return "fast"
