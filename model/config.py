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
``auto`` (default)
    ``fast`` in eager mode, ``reference`` whenever the op is being traced, scripted, exported or
    compiled, because the fast path's Python-level loops and in-place updates do not belong in a
    graph.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

__all__ = [
    "CCA_IMPLEMENTATIONS",
    "CcaImplementation",
    "cca_implementation",
    "get_cca_implementation",
    "resolve_cca_implementation",
    "set_cca_implementation",
]

CcaImplementation = Literal["auto", "reference", "fast"]
CCA_IMPLEMENTATIONS: tuple[str, ...] = ("auto", "reference", "fast")


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


def resolve_cca_implementation() -> Literal["reference", "fast"]:
    """The concrete implementation to run now (``auto`` resolved for the current context)."""
    if _in_graph_capture():
        return "reference"
    if _implementation == "auto":
        return "fast"
    return _implementation
