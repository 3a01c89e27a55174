"""Criss-cross attention ops (2D and 3D) against an independent per-pixel loop reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ccnet.model.cca import CrissCrossAttention, criss_cross_attention
from ccnet.model.cca3d import CrissCrossAttention3d, criss_cross_attention_3d
from ccnet.model.config import (
    cca_implementation,
    get_cca_implementation,
    resolve_cca_implementation,
    set_cca_implementation,
)

IMPLEMENTATIONS = ("reference", "fast")


def loop_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Float64 per-position loop over the set of positions sharing all but one coordinate.

    Written from the definition, independent of the library: the key set of a position is the
    union of its lines along every spatial axis, so the position itself appears exactly once.
    """
    q, k, v = q.double(), k.double(), v.double()
    spatial = q.shape[2:]
    out = torch.zeros(v.shape, dtype=torch.float64)
    for b in range(q.shape[0]):
        for pos in itertools.product(*(range(s) for s in spatial)):
            keys = sorted(
                {
                    (*pos[:axis], i, *pos[axis + 1 :])
                    for axis in range(len(spatial))
                    for i in range(spatial[axis])
                }
            )
            query = q[(b, slice(None), *pos)]
            energies = torch.stack([query @ k[(b, slice(None), *key)] for key in keys])
            weights = torch.softmax(energies, dim=0)
            values = torch.stack([v[(b, slice(None), *key)] for key in keys])  # (n, C)
            out[(b, slice(None), *pos)] = weights @ values
    return out


SHAPES_2D = [  # (B, Cq, C, H, W)
    (2, 3, 5, 4, 6),
    (1, 2, 3, 1, 5),
    (1, 2, 3, 7, 1),
    (2, 1, 2, 1, 1),
    (3, 4, 2, 5, 3),
]
SHAPES_3D = [  # (B, Cq, C, T, H, W)
    (2, 3, 4, 3, 4, 5),
    (1, 2, 3, 1, 3, 4),
    (1, 2, 2, 4, 1, 1),
    (2, 1, 3, 2, 1, 3),
]


def _qkv(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0):
    B, Cq, C, *spatial = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Cq, *spatial, generator=gen, dtype=dtype)
    k = torch.randn(B, Cq, *spatial, generator=gen, dtype=dtype)
    v = torch.randn(B, C, *spatial, generator=gen, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", SHAPES_2D, ids=str)
def test_2d_matches_loop_reference(impl: str, shape: tuple[int, ...]) -> None:
    q, k, v = _qkv(shape)
    with cca_implementation(impl):
        out = criss_cross_attention(q, k, v)
    torch.testing.assert_close(out, loop_reference(q, k, v), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", SHAPES_3D, ids=str)
def test_3d_matches_loop_reference(impl: str, shape: tuple[int, ...]) -> None:
    q, k, v = _qkv(shape)
    with cca_implementation(impl):
        out = criss_cross_attention_3d(q, k, v)
    torch.testing.assert_close(out, loop_reference(q, k, v), rtol=1e-10, atol=1e-10)


def test_self_counted_once() -> None:
    """With one key (H = W = 1) the output is that value; doubling it would not change that,
    so check a 1×2 map whose three candidate keys (self twice, neighbour once) differ."""
    q = torch.zeros(1, 1, 1, 2, dtype=torch.float64)  # zero energies: uniform weights
    k = torch.zeros_like(q)
    v = torch.tensor([[[[1.0, 4.0]]]], dtype=torch.float64)
    for impl in IMPLEMENTATIONS:
        with cca_implementation(impl):
            out = criss_cross_attention(q, k, v)
        # uniform over {self, neighbour} -> mean 2.5; counting self twice would give 2.0 / 3.0
        torch.testing.assert_close(out, torch.full_like(v, 2.5), msg=impl)


@pytest.mark.parametrize(
    "shape", [(2, 8, 16, 13, 21), (1, 16, 32, 31, 17), (3, 4, 8, 1, 9)], ids=str
)
def test_2d_implementations_agree_fp32(shape: tuple[int, ...]) -> None:
    q, k, v = _qkv(shape, torch.float32)
    results = {}
    for impl in IMPLEMENTATIONS:
        with cca_implementation(impl):
            results[impl] = criss_cross_attention(q, k, v)
    scale = results["reference"].abs().max()
    err = (results["fast"] - results["reference"]).abs().max() / scale
    assert err <= 1e-5, f"fast vs reference relative error {err:.2e} at {shape}"


def test_3d_implementations_agree_fp32() -> None:
    q, k, v = _qkv((2, 8, 16, 5, 11, 9), torch.float32)
    with cca_implementation("reference"):
        ref = criss_cross_attention_3d(q, k, v)
    with cca_implementation("fast"):
        fast = criss_cross_attention_3d(q, k, v)
    assert ((fast - ref).abs().max() / ref.abs().max()) <= 1e-5


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_3d_with_one_frame_equals_2d(impl: str) -> None:
    q, k, v = _qkv((2, 4, 6, 9, 7), torch.float32)
    with cca_implementation(impl):
        two_d = criss_cross_attention(q, k, v)
        three_d = criss_cross_attention_3d(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2))
    torch.testing.assert_close(three_d.squeeze(2), two_d, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradcheck_2d(impl: str) -> None:
    q, k, v = (t.requires_grad_() for t in _qkv((2, 2, 3, 3, 4)))
    with cca_implementation(impl):
        assert torch.autograd.gradcheck(criss_cross_attention, (q, k, v))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradcheck_3d(impl: str) -> None:
    q, k, v = (t.requires_grad_() for t in _qkv((1, 2, 2, 2, 3, 2)))
    with cca_implementation(impl):
        assert torch.autograd.gradcheck(criss_cross_attention_3d, (q, k, v))


def test_fast_path_same_with_and_without_autograd() -> None:
    """The fast path accumulates in place only without autograd; both branches must agree."""
    q, k, v = _qkv((2, 4, 8, 6, 5, 7), torch.float32)
    with cca_implementation("fast"):
        with torch.no_grad():
            no_grad = criss_cross_attention_3d(q, k, v)
        with_grad = criss_cross_attention_3d(q, k, v.clone().requires_grad_())
    torch.testing.assert_close(no_grad, with_grad.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_low_precision_finite_and_close(impl: str, dtype: torch.dtype, tol: float) -> None:
    q, k, v = _qkv((2, 4, 8, 9, 11), torch.float32)
    with cca_implementation(impl):
        expected = criss_cross_attention(q, k, v)
        out = criss_cross_attention(q.to(dtype), k.to(dtype), v.to(dtype))
        out3d = criss_cross_attention_3d(
            *(t.to(dtype).unsqueeze(2).expand(-1, -1, 3, -1, -1) for t in (q, k, v))
        )
    assert out.dtype == dtype and out3d.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(out3d).all()
    err = (out.float() - expected).abs().max() / expected.abs().max()
    assert err <= tol, f"{dtype} relative error {err:.2e}"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_cast_to_low_precision(impl: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    for module, shape in (
        (CrissCrossAttention(16), (2, 16, 7, 9)),
        (CrissCrossAttention3d(16), (1, 16, 3, 5, 6)),
    ):
        nn_init_gamma(module, 0.7)
        x = torch.randn(shape)
        expected = module(x)
        with cca_implementation(impl):
            out = module.to(dtype)(x.to(dtype))
        assert out.dtype == dtype and torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
        module.float()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_module_under_cpu_autocast(impl: str) -> None:
    torch.manual_seed(0)
    module = CrissCrossAttention(16)
    nn_init_gamma(module, 0.5)
    x = torch.randn(2, 16, 9, 8, requires_grad=True)
    with cca_implementation(impl), torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(out.float(), module(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_inference_under_cpu_autocast(impl: str) -> None:
    """The op without autograd inside autocast: float32 operands, bf16 compute (as the plain
    matmul formulation would), for the op and for an eval-mode module."""
    q, k, v = _qkv((2, 4, 8, 9, 7), dtype=torch.float32)
    expected = criss_cross_attention(q, k, v)
    torch.manual_seed(0)
    module = CrissCrossAttention(16).eval()
    nn_init_gamma(module, 0.5)
    x = torch.randn(2, 16, 9, 8)
    module_expected = module(x)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    with torch.inference_mode(), cca_implementation(impl), autocast:
        out = criss_cross_attention(q, k, v)
        module_out = module(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
    torch.testing.assert_close(module_out.float(), module_expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_non_contiguous_inputs(impl: str) -> None:
    q, k, v = _qkv((2, 3, 4, 6, 5))
    # transposed spatial axes and a channel slice: none of these is contiguous
    qt, kt = q.transpose(2, 3), k.transpose(2, 3)
    vt = torch.cat([v, v], dim=1)[:, ::2].transpose(2, 3)
    assert not (qt.is_contiguous() or vt.is_contiguous())
    with cca_implementation(impl):
        out = criss_cross_attention(qt, kt, vt)
    torch.testing.assert_close(out, loop_reference(qt, kt, vt), rtol=1e-10, atol=1e-10)


def nn_init_gamma(module: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        module.gamma.fill_(value)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_module_with_nonzero_gamma(impl: str) -> None:
    torch.manual_seed(0)
    module = CrissCrossAttention(16).double()
    nn_init_gamma(module, 0.3)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    with cca_implementation(impl):
        out = module(x)
    q, k, v = module.query_conv(x), module.key_conv(x), module.value_conv(x)
    torch.testing.assert_close(out, 0.3 * loop_reference(q, k, v) + x)
    assert module.query_conv.out_channels == 2 and module.value_conv.out_channels == 16


def test_module_gamma_starts_at_zero_and_names_match_peers() -> None:
    module = CrissCrossAttention(64)
    names = {name: tuple(p.shape) for name, p in module.state_dict().items()}
    assert names == {
        "query_conv.weight": (8, 64, 1, 1),
        "query_conv.bias": (8,),
        "key_conv.weight": (8, 64, 1, 1),
        "key_conv.bias": (8,),
        "value_conv.weight": (64, 64, 1, 1),
        "value_conv.bias": (64,),
        "gamma": (1,),
    }
    x = torch.randn(1, 64, 4, 4)
    torch.testing.assert_close(module(x), x)


def test_3d_module_with_nonzero_gamma() -> None:
    torch.manual_seed(0)
    module = CrissCrossAttention3d(8).double()
    nn_init_gamma(module, -0.4)
    x = torch.randn(1, 8, 3, 4, 2, dtype=torch.float64)
    q, k, v = module.query_conv(x), module.key_conv(x), module.value_conv(x)
    torch.testing.assert_close(module(x), -0.4 * loop_reference(q, k, v) + x)


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return result


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_never_materialises_pixel_by_pixel_matrix(impl: str) -> None:
    B, Cq, C, H, W = 1, 2, 4, 40, 48
    q, k, v = (t.requires_grad_() for t in _qkv((B, Cq, C, H, W), torch.float32))
    with cca_implementation(impl), _LargestOutput() as mode:
        criss_cross_attention(q, k, v).sum().backward()
    attention_map = B * H * W * (H + W)
    assert mode.largest <= attention_map, (mode.largest, attention_map)
    assert mode.largest < (H * W) ** 2 // 10


@pytest.mark.parametrize(
    ("module", "example", "other"),
    [
        (CrissCrossAttention(16), (2, 16, 6, 7), (3, 16, 9, 1)),
        (CrissCrossAttention3d(8), (2, 8, 3, 4, 5), (1, 8, 1, 6, 3)),
    ],
    ids=["2d", "3d"],
)
def test_exports_with_dynamic_shapes_and_no_eye_or_diag(module, example, other) -> None:
    """torch.export captures the reference path with symbolic sizes (the ONNX route)."""
    torch.manual_seed(0)
    module.eval()
    nn_init_gamma(module, 1.0)
    dims = {0: torch.export.Dim("batch", min=1, max=64)}
    for axis in range(2, len(example)):
        dims[axis] = torch.export.Dim(f"s{axis}", min=1, max=1024)
    with cca_implementation("fast"):
        program = torch.export.export(module, (torch.randn(example),), dynamic_shapes={"x": dims})
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("eye" in t or "diag" in t for t in targets), targets
    x = torch.randn(other)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), module(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "v_shape", "message"),
    [
        ((1, 2, 3), (1, 2, 3), (1, 2, 3), "must be"),
        ((1, 2, 3, 4), (1, 3, 3, 4), (1, 2, 3, 4), "same shape"),
        ((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 5), "share batch and spatial"),
        ((1, 2, 0, 4), (1, 2, 0, 4), (1, 2, 0, 4), ">= 1"),
    ],
)
def test_bad_shapes_raise_clear_errors(q_shape, k_shape, v_shape, message) -> None:
    with pytest.raises(ValueError, match=message):
        criss_cross_attention(torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape))


def test_implementation_switch() -> None:
    before = get_cca_implementation()
    with cca_implementation("reference"):
        assert resolve_cca_implementation() == "reference"
    assert get_cca_implementation() == before
    with pytest.raises(ValueError, match="unknown criss-cross attention implementation"):
        set_cca_implementation("cudnn")
    assert get_cca_implementation() == before


def test_registered_cuda_implementation_is_dispatched_and_explicit_choice_fails_clearly() -> None:
    """The registration hook: ``cuda`` runs the registered op; without one it says what to do."""
    from ccnet.model import config

    calls = []

    def fake(q, k, v):
        calls.append(q.dim())
        return v

    saved = dict(config._cuda_ops)
    try:
        config._cuda_ops.clear()
        q, k, v = _qkv((1, 2, 3, 4, 5), torch.float32)
        with cca_implementation("cuda"), pytest.raises(RuntimeError, match="enable_cuda_kernels"):
            criss_cross_attention(q, k, v)
        config.register_cuda_implementation(fake, fake)
        assert config.has_cuda_implementation()
        with cca_implementation("cuda"):
            criss_cross_attention(q, k, v)
            criss_cross_attention_3d(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2))
        assert calls == [4, 5]
        # auto never picks it for CPU tensors
        assert resolve_cca_implementation(q, k, v) == "fast"
    finally:
        config._cuda_ops.clear()
        config._cuda_ops.update(saved)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("block_cls", [CrissCrossAttention, CrissCrossAttention3d])
def test_a_block_call_resolves_the_implementation_once(
    monkeypatch: pytest.MonkeyPatch, block_cls: type, grad: bool
) -> None:
    """One decision per call, shared by the layout choice and the op (it used to be made twice)."""
    import ccnet.model.cca as cca_module
    from ccnet.model import config

    seen: list[str] = []
    real = config.resolve_cca_implementation

    def counting(*tensors: torch.Tensor) -> str:
        seen.append(real(*tensors))
        return seen[-1]

    monkeypatch.setattr(cca_module, "resolve_cca_implementation", counting)
    block = block_cls(16)
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn((1, 16, 2, 5, 6) if block_cls is CrissCrossAttention3d else (1, 16, 5, 6))
    with torch.set_grad_enabled(grad):
        out = block(x)
    assert seen == ["fast"], seen
    with cca_implementation("reference"), torch.no_grad():
        expected = block(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
