"""Axial ("criss-cross") attention over N spatial axes: the math shared by the 2D and 3D ops.

This module is public for the code that needs one implementation directly (the exporter's
custom op, the CUDA extension's input checks, benchmarks, tests); everything else calls
``model.cca.criss_cross_attention`` / ``model.cca3d.criss_cross_attention_3d``, whose dispatcher
(``model.cca.run_axial_attention``) picks the implementation. Nothing here chooses one.

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

Autograd. Under autograd the fast path runs a custom ``torch.autograd.Function`` whose backward
is written out with the same strided batched GEMMs and accumulates each gradient into a single
buffer; it saves q, k, v and the attention map only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

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


# Size of the temporary that holds a per-axis product of the autograd path before it is added
# into a strided view: a quarter of the product, at least 2**21 elements (8 MiB in float32).
# Smaller slices lower the peak only marginally (the autograd copy of a channels-first leaf's
# gradient dominates it) but multiply the number of ops; with 2 threads on a shared CPU every
# extra parallel region costs far more than its arithmetic (OpenMP threads spin at barriers).
_TEMP_ELEMENTS = 1 << 21
_TEMP_FRACTION = 4


def _as_3d(*tensors: Tensor) -> list[tuple[Tensor, ...]]:
    """Batched views (..., M, N) of equal batch shape as 3D views (batch, M, N), no copies.

    The batch dims are flattened where the strides of every tensor allow it, else the first
    one is iterated. (``matmul`` would copy non-flattenable operands instead, e.g. every
    axis-moved view of a channels-last tensor when B > 1.)
    """
    if tensors[0].dim() == 3:
        return [tensors]
    try:
        flat = tuple(t.view(-1, *t.shape[-2:]) for t in tensors)
    except RuntimeError:
        return [
            part for i in range(tensors[0].shape[0]) for part in _as_3d(*(t[i] for t in tensors))
        ]
    return [flat]


def _bmm_into(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out = a @ b for batched views (..., M, N); straight into ``out`` where it is contiguous.

    One batched GEMM per 3D piece (``bmm`` with a contiguous ``out`` writes it in place; a
    per-matrix loop like ``baddbmm_`` on a strided view costs a parallel region per matrix,
    which is slow when the CPU is shared).
    """
    for o, x, y in _as_3d(out, a, b):
        if o.is_contiguous():
            torch.bmm(x, y, out=o)
        else:
            o.copy_(torch.bmm(x, y))


def _add_bmm_(out: Tensor, a: Tensor, b: Tensor, budget: int | None = None) -> None:
    """out += a @ b for batched views (..., M, N) where ``out`` is a strided (axis-moved) view.

    The products are written by batched GEMMs into a contiguous temporary of at most
    ``budget`` elements (a slice of the outermost batch dim, which is split further when one
    index of it is larger than that) and added in one pass: a few large ops rather than a GEMM
    per matrix (``baddbmm_`` on a strided view), which matters when other processes compete
    for the cores.
    """
    if budget is None:
        budget = max(_TEMP_ELEMENTS, out.numel() // _TEMP_FRACTION)
    count = out.shape[0]
    per_index = out[0].numel() if count else 0
    if out.dim() > 3 and per_index > budget:
        for i in range(count):
            _add_bmm_(out[i], a[i], b[i], budget)
        return
    step = max(1, budget // max(1, per_index))
    for start in range(0, count, step):
        o, x, y = (t[start : start + step] for t in (out, a, b))
        product = o.new_empty(o.shape)  # contiguous (..., M, N)
        _bmm_into(product, x, y)
        o.add_(product)
        del product


def _aggregate_into(
    out: Tensor,
    weights: list[Tensor],
    source: Tensor,
    transpose: bool,
    temp_budget: int | None = None,
) -> None:
    """out = sum over axes d of the per-axis products of weights[d] with source along axis d.

    out, source: (B, *spatial, N) (out contiguous, source with unit stride along N);
    weights[d]: (B, *others, L, L') per axis (rows index the query along axis d, columns the
    key). ``transpose=False``: out[query] = sum_key W[query, key] source[key] (output, dQ);
    ``transpose=True``: out[key] = sum_query W[query, key] source[query] (dV, dK).
    The innermost axis is written first (its views are contiguous), the others are added
    through temporaries of at most ``temp_budget`` elements (default: see ``_add_bmm_``).
    """
    n = len(weights)
    for d in range(n - 1, -1, -1):
        axis = 1 + d
        w = weights[d].transpose(-1, -2) if transpose else weights[d]  # (B, *others, L, L')
        target = out.movedim(axis, -2)  # (B, *others, L, N)
        values = source.movedim(axis, -2)  # (B, *others, L', N)
        if d == n - 1:
            _bmm_into(target, w, values)
        else:
            _add_bmm_(target, w, values, temp_budget)


def _empty_channels_last(like: Tensor) -> Tensor:
    """Uninitialised tensor shaped like (B, C, *spatial) ``like`` with channels-last strides.

    Built with ``empty_strided``, not as a ``movedim`` view of a (B, *spatial, C) tensor: an
    autograd Function may return it and callers may then update it in place (autograd forbids
    in-place changes to views created inside a custom Function).
    """
    batch, channels, *spatial = like.shape
    order = (batch, *spatial, channels)
    strides = [1] * len(order)
    for i in range(len(order) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(order[i + 1], 1)
    # strides of (B, *spatial, C) put back in (B, C, *spatial) order
    stride = (strides[0], strides[-1], *strides[1:-1])
    return torch.empty_strided(like.shape, stride, dtype=like.dtype, device=like.device)


def _aggregate(weights: list[Tensor], source: Tensor, transpose: bool, like: Tensor) -> Tensor:
    """``_aggregate_into`` as a new (B, C, *spatial) tensor shaped like ``like``, channels-last.

    The gradient is returned in this layout whatever the layout of ``like``: where they differ,
    autograd copies it into the leaf's layout after backward returns, when the attention map
    and its gradient are already freed; converting here would hold both copies alongside them.
    """
    out = _empty_channels_last(like)
    _aggregate_into(out.movedim(1, -1), weights, source, transpose)
    return out


def _autocast_disabled(device_type: str) -> contextlib.AbstractContextManager[object]:
    """Autocast off for ``device_type`` (a no-op where autocast is unavailable or off).

    The custom Function chooses its own precision (GEMMs in the input dtype, softmax in float32
    for half precision); autocast would otherwise recast operands behind its back and break
    the in-place accumulations on mixed dtypes.
    """
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _attention_per_axis(attention: Tensor, slices: list[tuple[int, int]]) -> list[Tensor]:
    """Views of the joint map (B, *spatial, sum L) per axis d as (B, *others, L, L')."""
    return [attention[..., start:stop].movedim(1 + d, -2) for d, (start, stop) in enumerate(slices)]


def _fast_forward_keeping_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Forward of the fast path for the autograd Function: the output and the attention map.

    Returns ``(out, attention)``: out (B, C, *spatial) with channels-last strides (not a view),
    attention (B, *spatial, sum L), the only intermediate backward needs.
    """
    qc, kc = _channels_last(q), _channels_last(k)  # (B, *spatial, Cq)
    attention = _joint_softmax(_energies(qc, kc), v.dtype)  # (B, *spatial, sum L)
    del qc, kc  # backward recomputes these copies (cheap, Cq is small) rather than keep them
    slices = _axis_slices(tuple(q.shape[2:]))
    out = _empty_channels_last(v)  # (B, C, *spatial), channels-last strides
    weights = _attention_per_axis(attention, slices)
    # Whole-axis temporaries: the forward stays below the peak of forward + backward (which
    # holds the output, its gradient, dV, the map and its gradient at once); fewer ops are faster.
    vc = _channels_last(v)  # (B, *spatial, C)
    _aggregate_into(out.movedim(1, -1), weights, vc, transpose=False, temp_budget=out.numel())
    return out, attention


def _softmax_backward_(attention: list[Tensor], grad: list[Tensor]) -> list[Tensor]:
    """Energy gradients from attention gradients through the joint softmax, per axis.

    dE = A * (dA - sum over all keys of A * dA), with the sum taken across the axes. Works on
    the per-axis (B, *others, L, L') tensors; ``grad`` is overwritten where its dtype allows.
    Masked (self) entries have A = 0 and so get a zero gradient. Half precision is computed in
    float32 like the forward softmax and returned in the attention dtype.
    """
    dtype = grad[0].dtype
    if dtype in _LOW_PRECISION:
        attention = [a.float() for a in attention]
        grad = [g.float() for g in grad]
    total = None  # (B, *spatial): sum over all keys of A * dA
    for d, (a, g) in enumerate(zip(attention, grad, strict=True)):
        g.mul_(a)
        partial = g.sum(dim=-1).movedim(-1, 1 + d)  # (B, *others, L) -> (B, *spatial)
        total = partial if total is None else total + partial
    for d, (a, g) in enumerate(zip(attention, grad, strict=True)):
        # (B, *spatial) -> (B, *others, L, 1)
        g.addcmul_(a, total.movedim(1 + d, -1).unsqueeze(-1), value=-1.0)
    return [g.to(dtype) for g in grad]


def _fast_backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attention: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of q, k, v (channels-last) from per-axis strided batched GEMMs.

    dA_d = dOut · V along axis d; dE = A * (dA - sum_keys A * dA) across all axes;
    dV = sum_d A_d^T dOut, dQ = sum_d dE_d K, dK = sum_d dE_d^T Q, each along axis d.
    The order keeps the peak low: the channels-last copy of v (recomputed: saving it would
    hold a feature-sized tensor from forward to backward) lives only while dA is formed; dA
    becomes dE in place; dV comes next; the small copies of q and k are made last. Only the
    gradients that autograd asks for are computed (dA and dE not at all when only v needs one).
    """
    need_q, need_k, need_v = needs
    slices = _axis_slices(tuple(q.shape[2:]))
    weights = _attention_per_axis(attention, slices)  # views, (B, *others, L, L') per axis
    grad_c = _channels_last(grad_out)  # (B, *spatial, C); no copy if already channels-last
    grad_energy: list[Tensor] = []
    if need_q or need_k:
        vc = _channels_last(v)  # (B, *spatial, C)
        for d, w in enumerate(weights):
            axis = 1 + d
            grad_attention = w.new_empty(w.shape)  # (B, *others, L, L'), contiguous
            # (B, *others, L, C) @ (B, *others, C, L')
            _bmm_into(grad_attention, grad_c.movedim(axis, -2), vc.movedim(axis, -1))
            grad_energy.append(grad_attention)
        del vc, grad_attention
        grad_energy = _softmax_backward_(weights, grad_energy)

    grad_v = _aggregate(weights, grad_c, transpose=True, like=v) if need_v else None
    del grad_c
    grad_q = grad_k = None
    if need_q:
        grad_q = _aggregate(grad_energy, _channels_last(k), transpose=False, like=q)
    if need_k:
        grad_k = _aggregate(grad_energy, _channels_last(q), transpose=True, like=k)
    return grad_q, grad_k, grad_v


class _FastAxialAttention(torch.autograd.Function):
    """Fast path with a hand-written backward, used when q, k or v require a gradient.

    Autograd of the matmul formulation keeps a channels-last copy of v from forward to
    backward, materialises one output-sized gradient per axis plus their sum, and keeps the
    concatenated and split energy gradients alive together. Here forward saves only q, k, v
    (alive anyway) and the attention map; backward accumulates each gradient into one buffer.
    Second derivatives are not supported (``once_differentiable``).
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
        need_q, need_k, need_v = ctx.needs_input_grad  # type: ignore[attr-defined]
        with _autocast_disabled(grad_out.device.type):
            return _fast_backward(grad_out, q, k, v, attention, (need_q, need_k, need_v))


def _autocast_operands(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Apply autocast's cast up front, as the plain formulation's matmuls would.

    Under autocast those matmuls run in the autocast dtype, so float32 operands (not float64,
    which autocast leaves alone) are cast to it; the fast paths then run with autocast off, in
    one dtype. Under autograd the cast is recorded, and the gradients are cast back.
    """
    device_type = q.device.type
    if (
        torch.amp.is_autocast_available(device_type)
        and torch.is_autocast_enabled(device_type)
        and q.dtype != torch.float64
    ):
        dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


def _fast_with_grad(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Fast path under autograd: autocast's cast, then the custom Function."""
    return _FastAxialAttention.apply(*_autocast_operands(q, k, v))


def axial_attention_fast(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Same result as the reference, arranged for speed and memory on CPU.

    The operands are converted to channels-last memory with PyTorch's vectorised
    memory-format conversion (much faster than a generic permute copy); every product is then a
    strided batched GEMM on views. The innermost axis' contribution creates the output; the
    other axes are added into it in place with ``baddbmm_`` when no gradient is needed (saving
    one output-sized temporary per axis). When a gradient is needed, a custom autograd Function
    (``_FastAxialAttention``) computes the same products and writes its backward out the same
    way: autograd of the matmuls would keep a channels-last copy of v and per-axis gradient
    temporaries, more memory than the einsum formulation. The result is a channels-last
    (B, C, *spatial) tensor.
    """
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _fast_with_grad(q, k, v)
    q, k, v = _autocast_operands(q, k, v)
    with _autocast_disabled(q.device.type):
        return _fast_no_grad(q, k, v)


def _fast_no_grad(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The inference branch of ``axial_attention_fast``: in-place accumulation."""
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
    *,
    channels_last: bool = False,
) -> Tensor:
    """``gamma * op(q(x), k(x), v(x)) + x``, laid out for the implementation ``op`` runs.

    With ``channels_last`` (the caller runs the fast path without autograd) the input is brought
    to channels-last memory before the 1×1 projections: the convolutions are faster there on CPU
    and q, k, v then arrive in the layout the fast op wants, so it copies nothing. Without
    autograd the residual is applied in place on the attention output, which saves two
    feature-sized temporaries. With autograd the input stays as it is: the convolutions would
    save the channels-last copy for their backward, one more feature-sized tensor per pass held
    until the backward.
    """
    grad = torch.is_grad_enabled()
    if channels_last and not grad and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        source = x.contiguous(memory_format=fmt)
    else:
        source = x
    query_conv, key_conv, value_conv = projections
    q, k, v = query_conv(source), key_conv(source), value_conv(source)
    del source  # a channels-last copy of x is not needed past the projections
    attended = op(q, k, v)
    del q, k, v
    if grad:
        return gamma * attended + x
    return attended.mul_(gamma).add_(x)
