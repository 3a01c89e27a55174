"""Axial ("criss-cross") attention over N spatial axes: the math shared by the 2D and 3D ops.

Every position attends to all positions that differ from it along exactly one spatial axis,
plus itself once: for (H, W) that is its column and its row, H + W - 1 keys; for (T, H, W) its
time line, column and row, T + H + W - 2 keys. The energies of all axes share one softmax.

Layout. Inputs are channels-first ``(B, C, *spatial)``. Internally both implementations work on
channels-last views ``(B, *spatial, C)``: with the channel axis innermost, the operand of every
per-axis product is a matrix ``(L, C)`` with unit stride along C, so each axis is a (strided)
batched GEMM. In channels-first memory only the innermost spatial axis has that property.

Self-loops. Each axis would include the position itself; it is kept on the last axis only and
masked (``-inf``) on the others, so it is counted once. The mask is built from an index
comparison (``arange == arange``), never ``eye``/``diag``: that traces to Range/Equal/Where in
ONNX, works for any length and keeps the dtype of the energies (a float32 ``-inf`` matrix would
break half precision).

Memory. The joint attention map is ``B × prod(spatial) × sum(spatial)``; no
``prod(spatial) × prod(spatial)`` matrix is ever formed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from model.config import resolve_cca_implementation

__all__ = [
    "attention_block_forward",
    "axial_attention_fast",
    "axial_attention_reference",
    "check_axial_inputs",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_axial_inputs(q: Tensor, k: Tensor, v: Tensor, spatial_dims: int, op: str) -> None:
    """Raise a ValueError that names the problem when q, k, v do not fit together."""
    rank = 2 + spatial_dims
    layout = "(B, C, " + ", ".join("THW"[-spatial_dims:]) + ")"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != rank:
            raise ValueError(f"{op}: {name} must be {layout}, got shape {tuple(t.shape)}")
    if q.shape != k.shape:
        raise ValueError(
            f"{op}: q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if v.shape[0] != q.shape[0] or v.shape[2:] != q.shape[2:]:
        raise ValueError(
            f"{op}: v must share batch and spatial size with q, got v {tuple(v.shape)} "
            f"and q {tuple(q.shape)}"
        )
    if any(s < 1 for s in q.shape[2:]):
        raise ValueError(f"{op}: every spatial size must be >= 1, got {tuple(q.shape[2:])}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def _self_mask(length: int, device: torch.device) -> Tensor:
    """(L, L) boolean matrix, True on the diagonal, built by index comparison."""
    index = torch.arange(length, device=device)
    return index.unsqueeze(1) == index.unsqueeze(0)


def _energies(qc: Tensor, kc: Tensor) -> list[Tensor]:
    """Per-axis energies, each laid out as (B, *spatial, L_axis), self masked except last axis.

    qc, kc: channels-last views (B, *spatial, C).
    """
    n = qc.dim() - 2
    energies = []
    for d in range(n):
        axis = 1 + d
        # (B, *others, L, C) @ (B, *others, C, L') -> (B, *others, L, L')
        e = torch.matmul(qc.movedim(axis, -2), kc.movedim(axis, -1))
        if d < n - 1:
            e = e.masked_fill(_self_mask(e.shape[-1], e.device), float("-inf"))
        energies.append(e.movedim(-2, axis))  # (B, *spatial, L')
    return energies


def _joint_softmax(energies: list[Tensor], dtype: torch.dtype) -> Tensor:
    """Softmax over the concatenated keys of all axes; float32 maths for half precision."""
    cat = torch.cat(energies, dim=-1)
    if cat.dtype in _LOW_PRECISION:
        return torch.softmax(cat, dim=-1, dtype=torch.float32).to(dtype)
    return torch.softmax(cat, dim=-1)


def _split_softmax(energies: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """The same joint softmax without concatenating, one attention tensor per axis.

    No slice boundaries are computed from sizes, so a traced graph stays valid at any input
    size, and the exported graph is plain ReduceMax/Exp/ReduceSum/Div.
    """
    if energies[0].dtype in _LOW_PRECISION:
        energies = [e.float() for e in energies]
    peak = energies[0].amax(dim=-1, keepdim=True)
    for e in energies[1:]:
        peak = torch.maximum(peak, e.amax(dim=-1, keepdim=True))
    exps = [torch.exp(e - peak) for e in energies]
    total = exps[0].sum(dim=-1, keepdim=True)
    for p in exps[1:]:
        total = total + p.sum(dim=-1, keepdim=True)
    return [p / total if p.dtype == dtype else (p / total).to(dtype) for p in exps]


def _axis_slices(spatial: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, stop) of each axis' keys inside the joint attention map."""
    slices, start = [], 0
    for length in spatial:
        slices.append((start, start + length))
        start += length
    return slices


def axial_attention_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain formulation: per-axis matmuls on moved views, one joint softmax, sum of axes.

    q, k: (B, Cq, *spatial); v: (B, C, *spatial). Returns (B, C, *spatial).
    """
    qc, kc, vc = (t.movedim(1, -1) for t in (q, k, v))  # (B, *spatial, C)
    out = None
    for d, a in enumerate(_split_softmax(_energies(qc, kc), v.dtype)):
        axis = 1 + d
        # (B, *others, L, L') @ (B, *others, L', C) -> (B, *others, L, C)
        contribution = torch.matmul(a.movedim(axis, -2), vc.movedim(axis, -2))
        contribution = contribution.movedim(-2, axis)
        out = contribution if out is None else out + contribution
    return out.movedim(-1, 1)


def _channels_last(t: Tensor) -> Tensor:
    """Channels-last view (B, *spatial, C) over channels-last memory (one fast copy at most)."""
    if t.dim() in (4, 5):
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        t = t.contiguous(memory_format=fmt)
    else:  # other ranks have no memory-format fast path; a plain copy does the same job
        t = t.movedim(1, -1).contiguous().movedim(-1, 1)
    return t.movedim(1, -1)


def _baddbmm_into(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out += a @ b in place for batched views (..., L, C); no temporary the size of ``out``.

    The batch dims are flattened when the strides allow it, else the first is looped over.
    """
    if out.dim() == 3:
        out.baddbmm_(a, b)
        return
    try:
        flat = [t.view(-1, *t.shape[-2:]) for t in (out, a, b)]
    except RuntimeError:  # batch dims not flattenable as a view: recurse over the first one
        for i in range(out.shape[0]):
            _baddbmm_into(out[i], a[i], b[i])
        return
    flat[0].baddbmm_(flat[1], flat[2])


def axial_attention_fast(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Same result as the reference, arranged for speed and memory on CPU.

    The operands are converted to channels-last memory with PyTorch's vectorised
    memory-format conversion (much faster than a generic permute copy); every product is then a
    strided batched GEMM on views. The innermost axis' contribution creates the output; the
    other axes are added into it in place with ``baddbmm_`` when no gradient is needed (saving
    one output-sized temporary per axis) and out of place otherwise (in-place updates of views
    make autograd keep extra copies). The result is a channels-last (B, C, *spatial) tensor.
    """
    n = q.dim() - 2
    qc, kc, vc = (_channels_last(t) for t in (q, k, v))
    attention = _joint_softmax(_energies(qc, kc), v.dtype)
    slices = _axis_slices(tuple(q.shape[2:]))
    in_place = not (
        torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    )

    start, stop = slices[-1]
    out = torch.matmul(attention[..., start:stop], vc)  # innermost axis: (B, *spatial, C)
    for d in range(n - 1):
        axis = 1 + d
        start, stop = slices[d]
        a = attention[..., start:stop].movedim(axis, -2)  # (B, *others, L, L')
        values = vc.movedim(axis, -2)  # (B, *others, L', C)
        if in_place:
            _baddbmm_into(out.movedim(axis, -2), a, values)
        else:
            out = out + torch.matmul(a, values).movedim(-2, axis)
    return out.movedim(-1, 1)


def attention_block_forward(
    x: Tensor,
    projections: tuple[nn.Module, nn.Module, nn.Module],
    gamma: Tensor,
    op: Callable[[Tensor, Tensor, Tensor], Tensor],
) -> Tensor:
    """``gamma * op(q(x), k(x), v(x)) + x``, laid out for the active implementation.

    On the fast path the input is brought to channels-last memory before the 1×1 projections:
    the convolutions are faster there on CPU and q, k, v then arrive in the layout the fast op
    wants, so it copies nothing. Without autograd the residual is applied in place on the
    attention output, which saves two feature-sized temporaries.
    """
    if resolve_cca_implementation() == "fast" and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        source = x.contiguous(memory_format=fmt)
    else:
        source = x
    query_conv, key_conv, value_conv = projections
    q, k, v = query_conv(source), key_conv(source), value_conv(source)
    del source  # a channels-last copy of x is not needed past the projections
    attended = op(q, k, v)
    del q, k, v
    if torch.is_grad_enabled():
        return gamma * attended + x
    return attended.mul_(gamma).add_(x)
