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

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

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


def _baddbmm_into(out: Tensor, a: Tensor, b: Tensor, beta: float = 1.0) -> None:
    """out = beta * out + a @ b in place for batched views (..., L, C); no temporary the size
    of ``out``.

    The batch dims are flattened when the strides allow it, else the first is looped over.
    ``beta=0`` overwrites ``out`` (its contents, even NaN, are ignored), so a buffer from
    ``torch.empty`` can receive the first of several accumulated products.
    """
    if out.dim() == 3:
        out.baddbmm_(a, b, beta=beta)
        return
    try:
        flat = [t.view(-1, *t.shape[-2:]) for t in (out, a, b)]
    except RuntimeError:  # batch dims not flattenable as a view: recurse over the first one
        for i in range(out.shape[0]):
            _baddbmm_into(out[i], a[i], b[i], beta)
        return
    flat[0].baddbmm_(flat[1], flat[2], beta=beta)


def _empty_channels_last(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Uninitialised (B, C, *spatial) tensor with channels-last strides, dtype/device of ``like``.

    Built with ``empty_strided`` rather than as ``movedim`` of a (B, *spatial, C) tensor, so it
    is not a view: an autograd Function may return it and callers may then update it in place
    (autograd forbids in-place changes to views created inside a custom Function).
    """
    batch, channels, *spatial = shape
    last_first = (batch, *spatial, channels)
    strides = [1] * len(last_first)
    for i in range(len(last_first) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(last_first[i + 1], 1)
    # strides of (B, *spatial, C) reordered to (B, C, *spatial)
    stride = (strides[0], strides[-1], *strides[1:-1])
    return torch.empty_strided(shape, stride, dtype=like.dtype, device=like.device)


def _autocast_disabled(device_type: str) -> contextlib.AbstractContextManager[object]:
    """Autocast off for ``device_type`` (a no-op where autocast is unavailable or off).

    The custom Function picks its own precision (GEMMs in the input dtype, softmax in float32
    for half precision); autocast would otherwise recast operands behind its back, e.g. turn a
    float32 attention map into bfloat16 inside an in-place ``baddbmm_`` that then fails on mixed
    dtypes.
    """
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _fast_forward_keeping_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Forward of the fast path for the autograd Function: the output and the attention map.

    Runs without autograd (inside ``Function.forward``), so every axis is accumulated in place
    into one preallocated channels-last output, as the no-grad branch does. Returns
    ``(out, attention)``: out (B, C, *spatial) with channels-last strides (not a view),
    attention (B, *spatial, sum L) contiguous, the only intermediate backward needs.
    """
    qc, kc = _channels_last(q), _channels_last(k)  # (B, *spatial, Cq)
    attention = _joint_softmax(_energies(qc, kc), v.dtype)  # (B, *spatial, sum L)
    del qc, kc  # channels-last copies of q, k: backward recomputes them (cheap, Cq is small)
    vc = _channels_last(v)  # (B, *spatial, C)
    out = _empty_channels_last(tuple(v.shape), v)  # (B, C, *spatial), channels-last strides
    out_c = out.movedim(1, -1)  # (B, *spatial, C) view of the same memory
    slices = _axis_slices(tuple(q.shape[2:]))
    n = len(slices)
    # innermost axis first: its batch dims always flatten, one batched GEMM initialises out
    for d in range(n - 1, -1, -1):
        axis = 1 + d
        start, stop = slices[d]
        _baddbmm_into(
            out_c.movedim(axis, -2),  # (B, *others, L, C)
            attention[..., start:stop].movedim(axis, -2),  # (B, *others, L, L')
            vc.movedim(axis, -2),  # (B, *others, L', C)
            beta=0.0 if d == n - 1 else 1.0,
        )
    return out, attention


def _softmax_backward_(attention: Tensor, grad_attention: Tensor) -> Tensor:
    """Gradient of the energies from that of the joint softmax: ``A * (dA - sum_keys A * dA)``.

    Overwrites ``grad_attention`` where its dtype allows (no temporary the size of the map).
    Masked (self) entries have A = 0 and so get a zero gradient. Half precision is computed in
    float32 like the forward softmax and returned in the attention dtype.
    """
    if attention.dtype in _LOW_PRECISION:
        weights = attention.float()
        grad = grad_attention.float()
    else:
        weights, grad = attention, grad_attention
    grad.mul_(weights)  # A * dA
    total = grad.sum(dim=-1, keepdim=True)  # (B, *spatial, 1)
    grad.addcmul_(weights, total, value=-1.0)  # A * dA - A * sum(A * dA)
    return grad.to(attention.dtype)


def _fast_backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attention: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of q, k, v with per-axis strided batched GEMMs accumulated in place.

    Order chosen for peak memory: the channels-last copy of v lives only while dA is formed,
    dA is turned into dE in place, and dV is formed after v's copy is gone. Gradients are
    returned channels-last (B, C, *spatial); autograd accepts any strides.
    """
    need_q, need_k, need_v = needs
    slices = _axis_slices(tuple(q.shape[2:]))
    grad_c = _channels_last(grad_out)  # (B, *spatial, C); no copy if already channels-last
    grad_energy = None
    if need_q or need_k:
        vc = _channels_last(v)  # (B, *spatial, C)
        grad_attention = torch.empty_like(attention, memory_format=torch.contiguous_format)
        for d, (start, stop) in enumerate(slices):
            axis = 1 + d
            _baddbmm_into(
                grad_attention[..., start:stop].movedim(axis, -2),  # (B, *others, L, L')
                grad_c.movedim(axis, -2),  # (B, *others, L, C)
                vc.movedim(axis, -1),  # (B, *others, C, L')
                beta=0.0,
            )
        del vc
        grad_energy = _softmax_backward_(attention, grad_attention)  # (B, *spatial, sum L)
        del grad_attention

    grad_v = None
    if need_v:
        grad_vc = _empty_channels_last(tuple(v.shape), v).movedim(1, -1)  # (B, *spatial, C)
        _accumulate_transposed(grad_vc, attention, grad_c, slices)
        grad_v = grad_vc.movedim(-1, 1)
    del grad_c

    grad_q = grad_k = None
    if need_q:
        kc = _channels_last(k)  # (B, *spatial, Cq)
        grad_qc = _empty_channels_last(tuple(q.shape), q).movedim(1, -1)  # (B, *spatial, Cq)
        n = len(slices)
        for d in range(n - 1, -1, -1):
            axis = 1 + d
            start, stop = slices[d]
            _baddbmm_into(
                grad_qc.movedim(axis, -2),  # (B, *others, L, Cq)
                grad_energy[..., start:stop].movedim(axis, -2),  # (B, *others, L, L')
                kc.movedim(axis, -2),  # (B, *others, L', Cq)
                beta=0.0 if d == n - 1 else 1.0,
            )
        del kc
        grad_q = grad_qc.movedim(-1, 1)
    if need_k:
        qc = _channels_last(q)  # (B, *spatial, Cq)
        grad_kc = _empty_channels_last(tuple(k.shape), k).movedim(1, -1)  # (B, *spatial, Cq)
        _accumulate_transposed(grad_kc, grad_energy, qc, slices)
        grad_k = grad_kc.movedim(-1, 1)
    return grad_q, grad_k, grad_v


def _accumulate_transposed(
    out: Tensor, weights: Tensor, source: Tensor, slices: list[tuple[int, int]]
) -> None:
    """out[key] = sum over axes and over the queries on key's line of weights[query, key] *
    source[query]: the transposed aggregation shared by dV (A, dOut) and dK (dE, Q).

    out, source: channels-last (B, *spatial, C); weights: (B, *spatial, sum L).
    """
    n = len(slices)
    for d in range(n - 1, -1, -1):
        axis = 1 + d
        start, stop = slices[d]
        _baddbmm_into(
            out.movedim(axis, -2),  # (B, *others, L', C)
            weights[..., start:stop].movedim(axis, -2).transpose(-1, -2),  # (B, *others, L', L)
            source.movedim(axis, -2),  # (B, *others, L, C)
            beta=0.0 if d == n - 1 else 1.0,
        )


class _FastAxialAttention(torch.autograd.Function):
    """Fast path with a hand-written backward, used when q, k or v require a gradient.

    Autograd of the matmul formulation keeps a channels-last copy of v alive from forward to
    backward and materialises one output-sized gradient per axis before summing them. Here
    forward saves only q, k, v (alive anyway) and the attention map, and backward accumulates
    every gradient in place with strided batched GEMMs. Second derivatives are not supported.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        with _autocast_disabled(q.device.type):
            out, attention = _fast_forward_keeping_attention(q, k, v)
        ctx.save_for_backward(q, k, v, attention)
        return out

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        q, k, v, attention = ctx.saved_tensors  # type: ignore[attr-defined]
        needs = tuple(ctx.needs_input_grad[:3])  # type: ignore[attr-defined]
        with _autocast_disabled(grad_out.device.type):
            return _fast_backward(grad_out, q, k, v, attention, needs)  # type: ignore[arg-type]


def _fast_with_grad(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Fast path under autograd; applies autocast's cast itself, then runs the Function.

    Under autocast the matmuls of the plain formulation would run in the autocast dtype, so
    float32 (not float64, which autocast leaves alone) operands are cast to it up front; the
    cast is recorded by autograd, which casts the gradients back.
    """
    device_type = q.device.type
    if (
        torch.amp.is_autocast_available(device_type)
        and torch.is_autocast_enabled(device_type)
        and q.dtype not in (torch.float64, torch.get_autocast_dtype(device_type))
    ):
        dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return _FastAxialAttention.apply(q, k, v)


def axial_attention_fast(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Same result as the reference, arranged for speed and memory on CPU.

    The operands are converted to channels-last memory with PyTorch's vectorised
    memory-format conversion (much faster than a generic permute copy); every product is then a
    strided batched GEMM on views. The innermost axis' contribution creates the output; the
    other axes are added into it in place with ``baddbmm_`` when no gradient is needed (saving
    one output-sized temporary per axis). When a gradient is needed the same forward runs inside
    a custom autograd Function (``_FastAxialAttention``) whose backward is written out the same
    way: autograd of the matmuls would keep a channels-last copy of v and per-axis gradient
    temporaries, using more memory than the einsum formulation. The result is a channels-last
    (B, C, *spatial) tensor.
    """
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _fast_with_grad(q, k, v)
    n = q.dim() - 2
    qc, kc, vc = (_channels_last(t) for t in (q, k, v))
    attention = _joint_softmax(_energies(qc, kc), v.dtype)
    slices = _axis_slices(tuple(q.shape[2:]))

    start, stop = slices[-1]
    out = torch.matmul(attention[..., start:stop], vc)  # innermost axis: (B, *spatial, C)
    for d in range(n - 1):
        axis = 1 + d
        start, stop = slices[d]
        a = attention[..., start:stop].movedim(axis, -2)  # (B, *others, L, L')
        values = vc.movedim(axis, -2)  # (B, *others, L', C)
        _baddbmm_into(out.movedim(axis, -2), a, values)
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
