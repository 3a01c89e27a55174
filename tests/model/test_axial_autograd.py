"""Hand-written backward of the fast axial attention path (``_FastAxialAttention``).

The fast path switches to a custom autograd Function whenever q, k or v require a gradient;
these tests check its gradients against finite differences (float64) and against autograd of
the reference formulation (float32), across 2D/3D, size-1 axes, batch > 1, memory layouts
(channels-first, channels-last, strided), gradient subsets, half precision and autocast.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import ccnet.model.axial as axial
from ccnet.model.axial import axial_attention_fast, axial_attention_reference

Layout = Callable[[Tensor], Tensor]


def _channels_first(t: Tensor) -> Tensor:
    return t.contiguous()


def _channels_last(t: Tensor) -> Tensor:
    return t.movedim(1, -1).contiguous().movedim(-1, 1)


def _transposed_spatial(t: Tensor) -> Tensor:
    """Same values, the last two spatial axes swapped in memory: neither layout above."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def _channel_stride_two(t: Tensor) -> Tensor:
    """Every other channel of a doubled tensor: not dense, so no memory format applies."""
    return torch.cat([t, t], dim=1)[:, ::2]


LAYOUTS: dict[str, Layout] = {
    "channels_first": _channels_first,
    "channels_last": _channels_last,
    "transposed_spatial": _transposed_spatial,
    "channel_stride_2": _channel_stride_two,
}


def _qkv(
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float64,
    layout: Layout = _channels_first,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Leaf q, k, v for (B, Cq, C, *spatial) in the given memory layout, requiring grad."""
    B, Cq, C, *spatial = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Cq, *spatial, generator=gen, dtype=dtype)
    k = torch.randn(B, Cq, *spatial, generator=gen, dtype=dtype)
    v = torch.randn(B, C, *spatial, generator=gen, dtype=dtype)
    return tuple(layout(t).requires_grad_() for t in (q, k, v))  # type: ignore[return-value]


def _grads(
    op: Callable[[Tensor, Tensor, Tensor], Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    grad_out: Tensor,
) -> tuple[Tensor, list[Tensor | None]]:
    """Output and input gradients of ``op`` for the upstream gradient ``grad_out``."""
    for t in (q, k, v):
        t.grad = None
    out = op(q, k, v)
    out.backward(grad_out)
    grads = [t.grad for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    return out.detach(), grads


def _uses_custom_function(out: Tensor) -> bool:
    return type(out.grad_fn).__name__.startswith("_FastAxialAttention")


# (B, Cq, C, *spatial), each with a size-1 axis somewhere, kept tiny for gradcheck
GRADCHECK_SHAPES = [
    (2, 2, 3, 3, 4),
    (1, 2, 2, 1, 4),
    (2, 1, 2, 3, 1),
    (1, 2, 2, 1, 1),
    (1, 2, 2, 2, 3, 2),
    (2, 1, 2, 1, 3, 2),
    (1, 2, 3, 3, 1, 2),
    (1, 1, 2, 2, 2, 1),
]


@pytest.mark.parametrize("shape", GRADCHECK_SHAPES, ids=str)
def test_gradcheck_float64(shape: tuple[int, ...]) -> None:
    q, k, v = _qkv(shape)
    assert _uses_custom_function(axial_attention_fast(q, k, v))
    assert torch.autograd.gradcheck(axial_attention_fast, (q, k, v))


def test_gradcheck_channels_last_and_strided_inputs() -> None:
    for layout in (_channels_last, _transposed_spatial, _channel_stride_two):
        q, k, v = _qkv((2, 1, 2, 2, 2, 3), layout=layout)
        assert torch.autograd.gradcheck(axial_attention_fast, (q, k, v)), layout.__name__


# float32 agreement with the reference; larger shapes, B > 1
AGREEMENT_SHAPES = [
    (2, 8, 16, 13, 21),
    (3, 4, 24, 1, 9),
    (2, 4, 12, 7, 1),
    (2, 4, 16, 5, 11, 9),
    (3, 2, 8, 1, 6, 5),
    (2, 3, 8, 4, 1, 1),
]


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=str)
@pytest.mark.parametrize("shape", AGREEMENT_SHAPES, ids=str)
def test_gradients_match_reference_fp32(shape: tuple[int, ...], layout: str) -> None:
    q, k, v = _qkv(shape, torch.float32, LAYOUTS[layout])
    if layout != "channels_first" and min(shape[-2:]) > 1:
        assert not (q.is_contiguous() and v.is_contiguous())
    grad_out = torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
    out, fast = _grads(axial_attention_fast, q, k, v, grad_out)
    expected_out, reference = _grads(axial_attention_reference, q, k, v, grad_out)
    torch.testing.assert_close(
        out, expected_out, rtol=1e-5, atol=1e-5 * expected_out.abs().max().item()
    )
    for name, got, want in zip("qkv", fast, reference, strict=True):
        assert got is not None and want is not None
        assert got.shape == want.shape and got.dtype == want.dtype
        err = (got - want).abs().max() / want.abs().max()
        assert err <= 1e-5, f"d{name}: relative error {err:.2e} at {shape}, {layout}"


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_leaf_gradients_keep_the_input_layout(layout: str) -> None:
    """Gradients come back in the strides of their leaf, so autograd stores them as given."""
    q, k, v = _qkv((2, 4, 16, 6, 7), torch.float32, LAYOUTS[layout])
    axial_attention_fast(q, k, v).sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.stride() == t.stride()


def test_chunked_accumulation_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny temporaries: every per-axis product is formed and added in many batch slices."""
    monkeypatch.setattr(axial, "_TEMP_ELEMENTS", 8)
    monkeypatch.setattr(axial, "_TEMP_FRACTION", 10**9)
    for shape in ((2, 3, 37, 4, 5), (2, 2, 21, 3, 4, 5)):
        for layout in (_channels_first, _channels_last, _transposed_spatial):
            q, k, v = _qkv(shape, layout=layout)
            grad_out = torch.randn(v.shape, dtype=v.dtype)
            out, fast = _grads(axial_attention_fast, q, k, v, grad_out)
            expected_out, reference = _grads(axial_attention_reference, q, k, v, grad_out)
            torch.testing.assert_close(out, expected_out)
            for got, want in zip(fast, reference, strict=True):
                torch.testing.assert_close(got, want)


@pytest.mark.parametrize("which", [(0,), (1,), (2,), (0, 1), (1, 2)], ids=str)
def test_only_requested_gradients(which: tuple[int, ...]) -> None:
    """Inputs that do not require grad get none; the others match the reference."""
    base = _qkv((2, 3, 5, 4, 6), torch.float64)
    tensors = [t.detach().requires_grad_(i in which) for i, t in enumerate(base)]
    grad_out = torch.randn(tensors[2].shape, dtype=torch.float64)
    _, fast = _grads(axial_attention_fast, *tensors, grad_out)
    _, reference = _grads(axial_attention_reference, *tensors, grad_out)
    for i, (got, want) in enumerate(zip(fast, reference, strict=True)):
        if i in which:
            torch.testing.assert_close(got, want)
        else:
            assert got is None


def test_output_is_not_a_view_and_can_be_updated_in_place() -> None:
    """A custom Function's view outputs may not be modified in place; ours is a plain tensor."""
    q, k, v = _qkv((2, 2, 3, 4, 5))
    _, reference = _grads(axial_attention_reference, q, k, v, torch.full(v.shape, 2.0).double())
    out = axial_attention_fast(q, k, v)
    assert not out._is_view()
    out.mul_(2.0).sum().backward()
    for t, want in zip((q, k, v), reference, strict=True):
        torch.testing.assert_close(t.grad, want)


def test_retain_graph_second_backward_accumulates() -> None:
    q, k, v = _qkv((1, 2, 3, 3, 4))
    out = axial_attention_fast(q, k, v)
    out.sum().backward(retain_graph=True)
    first = [t.grad.clone() for t in (q, k, v)]
    out.sum().backward()
    for t, g in zip((q, k, v), first, strict=True):
        torch.testing.assert_close(t.grad, 2 * g)


def test_double_backward_is_refused() -> None:
    """Marked once_differentiable: a second derivative raises instead of being wrong."""
    q, k, v = _qkv((1, 2, 3, 3, 4))
    out = axial_attention_fast(q, k, v)
    grad_out = torch.randn(out.shape, dtype=out.dtype, requires_grad=True)
    (grad_v,) = torch.autograd.grad(out, v, grad_out, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_v.sum().backward()


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_gradients(dtype: torch.dtype, tol: float) -> None:
    """Half-precision gradients (softmax part in float32) stay close to float32 ones."""
    for shape in ((2, 4, 8, 6, 7), (2, 4, 8, 3, 6, 7)):
        q32, k32, v32 = _qkv(shape, torch.float32)
        grad_out = torch.randn(v32.shape, generator=torch.Generator().manual_seed(2))
        _, reference = _grads(axial_attention_reference, q32, k32, v32, grad_out)
        q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q32, k32, v32))
        _, grads = _grads(axial_attention_fast, q, k, v, grad_out.to(dtype))
        for name, got, want in zip("qkv", grads, reference, strict=True):
            assert got is not None and got.dtype == dtype and torch.isfinite(got).all()
            err = (got.float() - want).abs().max() / want.abs().max()
            assert err <= tol, f"{dtype} d{name}: relative error {err:.2e} at {shape}"


def test_under_cpu_autocast_float32_inputs() -> None:
    """Autocast runs the op in bfloat16; gradients come back in the float32 of the leaves."""
    q, k, v = _qkv((2, 4, 8, 5, 6), torch.float32)
    grad_out = torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
    _, reference = _grads(axial_attention_reference, q, k, v, grad_out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = axial_attention_fast(q, k, v)
    assert out.dtype == torch.bfloat16 and _uses_custom_function(out)
    out.float().backward(grad_out)
    for t, want in zip((q, k, v), reference, strict=True):
        assert t.grad is not None and t.grad.dtype == torch.float32
        err = (t.grad - want).abs().max() / want.abs().max()
        assert err <= 5e-2, f"relative error {err:.2e}"


def test_backward_called_inside_autocast() -> None:
    """Backward disables autocast itself, so calling it inside a region changes nothing."""
    q, k, v = _qkv((1, 2, 4, 4, 5), torch.float32)
    grad_out = torch.randn(v.shape)
    out, expected = _grads(axial_attention_fast, q, k, v, grad_out)
    out = axial_attention_fast(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out.backward(grad_out)
    for t, want in zip((q, k, v), expected, strict=True):
        assert t.grad is not None and t.grad.dtype == torch.float32
        torch.testing.assert_close(t.grad, want)


def test_float64_is_left_alone_by_autocast() -> None:
    q, k, v = _qkv((1, 2, 3, 3, 4))
    grad_out = torch.randn(v.shape, dtype=torch.float64)
    _, expected = _grads(axial_attention_fast, q, k, v, grad_out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = axial_attention_fast(q, k, v)
    assert out.dtype == torch.float64
    out.backward(grad_out)
    for t, want in zip((q, k, v), expected, strict=True):
        torch.testing.assert_close(t.grad, want)
