"""ONNX export: the attention node and its local function, checker, parity, fp16, CCNet3D."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from ccnet.export.onnx_functions import OP_DOMAIN, attention_function
from ccnet.export.runtime.sidecar import read_sidecar
from ccnet.model import Normalization, load_checkpoint
from ccnet.model.cca import criss_cross_attention
from ccnet.model.cca3d import criss_cross_attention_3d
from ccnet.model.config import cca_implementation
from tests.export.conftest import CHECK_SIZES_2D, NUM_CLASSES


def _session(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _torch_logits(checkpoint, pixels: np.ndarray) -> np.ndarray:
    """Independent reference: the checkpoint in PyTorch, normalised in PyTorch."""
    model, meta = load_checkpoint(checkpoint)
    norm = Normalization(**meta["normalization"])
    with torch.no_grad():
        return model(norm.normalize(torch.from_numpy(pixels), channel_dim=1)).numpy()


def _attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == OP_DOMAIN]


# ---------------------------------------------------------------------------- graph structure


@pytest.mark.parametrize(
    ("fixture", "op_type"),
    [("onnx_2d", "CrissCrossAttention"), ("onnx_3d", "CrissCrossAttention3d")],
)
def test_each_attention_is_one_plugin_node(request, fixture: str, op_type: str) -> None:
    model = onnx.load(request.getfixturevalue(fixture).model_path)
    nodes = _attention_nodes(model)
    assert len(nodes) == 2, f"{fixture}: recurrence 2 means two attention nodes"
    for node in nodes:
        assert node.op_type == op_type
        assert len(node.input) == 3 and len(node.output) == 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"plugin_version": b"1", "plugin_namespace": b""}
    assert {o.domain: o.version for o in model.opset_import}[OP_DOMAIN] == 1


@pytest.mark.parametrize(
    ("fixture", "op_type"),
    [("onnx_2d", "CrissCrossAttention"), ("onnx_3d", "CrissCrossAttention3d")],
)
def test_local_function_is_standard_ops_with_range_mask(
    request, fixture: str, op_type: str
) -> None:
    model = onnx.load(request.getfixturevalue(fixture).model_path)
    (function,) = model.functions
    assert (function.domain, function.name) == (OP_DOMAIN, op_type)
    assert list(function.input) == ["q", "k", "v"] and list(function.output) == ["out"]
    assert set(function.attribute) == {"plugin_version", "plugin_namespace"}
    ops = {n.op_type for n in function.node}
    assert {n.domain for n in function.node} == {""}
    assert {"Range", "Equal", "Where", "MatMul", "Exp"} <= ops
    assert "EyeLike" not in ops
    model_opset = {o.domain: o.version for o in model.opset_import}[""]
    assert {o.domain: o.version for o in function.opset_import} == {"": model_opset}


def test_checker_passes_and_no_eyelike_anywhere(onnx_2d, onnx_3d) -> None:
    for result in (onnx_2d, onnx_3d):
        model = onnx.load(result.model_path)
        onnx.checker.check_model(model, full_check=True)
        inlined = onnx.inliner.inline_local_functions(model)
        all_ops = [n.op_type for n in inlined.graph.node]
        assert "EyeLike" not in all_ops
        assert "Range" in all_ops  # the self mask survived inlining


def test_io_is_float32_rgb_with_dynamic_axes(onnx_2d) -> None:
    model = onnx.load(onnx_2d.model_path)

    def describe(value: onnx.ValueInfoProto) -> tuple:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        return value.name, value.type.tensor_type.elem_type, dims

    assert [describe(v) for v in model.graph.input] == [
        ("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    ]
    assert [describe(v) for v in model.graph.output] == [
        ("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES, "height", "width"])
    ]
    sidecar = read_sidecar(onnx_2d.model_path)
    assert sidecar["inputs"] == [
        {"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}
    ]
    assert sidecar["dynamic_axes"]["logits"] == {"0": "batch", "2": "height", "3": "width"}
    assert sidecar["input_policy"]["normalization"] == "in_graph"
    assert sidecar["classes"] == ["road", "car", "sky"]
    assert len(sidecar["palette"]) == NUM_CLASSES
    assert sidecar["opset"] == 18


# ---------------------------------------------------------------------------- numerics


def test_sidecar_records_passing_parity_at_two_sizes(onnx_2d) -> None:
    parity = read_sidecar(onnx_2d.model_path)["parity"]
    assert parity["passed"] is True
    shapes = [tuple(case["shape"]) for case in parity["cases"]]
    assert shapes == [(3, NUM_CLASSES, *size) for size in CHECK_SIZES_2D]
    for case in parity["cases"]:
        assert case["relative_error"] <= 1e-4
        assert case["inputs"] == "noise, astronaut, coffee"


@pytest.mark.parametrize("shape", [(1, 3, 40, 48), (2, 3, 33, 90)], ids=str)
def test_onnxruntime_matches_pytorch_at_unseen_sizes(onnx_2d, checkpoint_2d, shape) -> None:
    pixels = np.random.default_rng(3).uniform(0, 255, shape).astype(np.float32)
    (logits,) = _session(onnx_2d.model_path.read_bytes()).run(None, {"image": pixels})
    expected = _torch_logits(checkpoint_2d, pixels)
    scale = np.abs(expected).max()
    assert np.abs(logits - expected).max() <= 1e-4 * scale


def test_inlined_model_runs_like_the_original(onnx_2d) -> None:
    """What a TensorRT-less tool sees after `onnx.inliner`: standard ops only, same numbers."""
    model = onnx.load(onnx_2d.model_path)
    inlined = onnx.inliner.inline_local_functions(model)
    assert not inlined.functions
    assert not [n for n in inlined.graph.node if n.domain not in ("", "ai.onnx")]
    onnx.checker.check_model(inlined)
    pixels = np.random.default_rng(4).uniform(0, 255, (2, 3, 56, 40)).astype(np.float32)
    (original,) = _session(model).run(None, {"image": pixels})
    (flat,) = _session(inlined).run(None, {"image": pixels})
    np.testing.assert_allclose(flat, original, rtol=1e-5, atol=1e-5)


def _single_op_model(spatial_dims: int, elem_type: int) -> onnx.ModelProto:
    function = attention_function(spatial_dims, opset=18)
    rank = spatial_dims + 2
    inputs = [
        helper.make_tensor_value_info(name, elem_type, [f"{name}{i}" for i in range(rank)])
        for name in ("q", "k", "v")
    ]
    output = helper.make_tensor_value_info("out", elem_type, [f"o{i}" for i in range(rank)])
    node = helper.make_node(
        function.name, ["q", "k", "v"], ["out"], domain=OP_DOMAIN, plugin_version="1",
        plugin_namespace="",
    )  # fmt: skip
    graph = helper.make_graph([node], "attention", inputs, [output])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(OP_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[function], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


CASES = [  # (B, Cq, C, *spatial): edge cases with lines of length 1
    (2, 3, 5, 6, 7),
    (1, 2, 4, 1, 5),
    (1, 2, 4, 6, 1),
    (2, 3, 4, 3, 4, 5),
    (1, 2, 3, 1, 3, 4),
    (1, 2, 3, 4, 1, 1),
]


@pytest.mark.parametrize("shape", CASES, ids=str)
def test_function_body_matches_the_pytorch_op(shape: tuple[int, ...]) -> None:
    batch, cq, c, *spatial = shape
    rng = np.random.default_rng(5)
    q, k = (rng.standard_normal((batch, cq, *spatial)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((batch, c, *spatial)).astype(np.float32)
    op = criss_cross_attention if len(spatial) == 2 else criss_cross_attention_3d
    with cca_implementation("reference"):
        expected = op(*(torch.from_numpy(t) for t in (q, k, v))).numpy()
    session = _session(_single_op_model(len(spatial), TensorProto.FLOAT))
    (out,) = session.run(None, {"q": q, "k": k, "v": v})
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5, err_msg=str(shape))


def test_function_body_runs_in_float16() -> None:
    rng = np.random.default_rng(6)
    q, k = (rng.standard_normal((1, 2, 5, 6)).astype(np.float16) for _ in range(2))
    v = rng.standard_normal((1, 3, 5, 6)).astype(np.float16)
    (out,) = _session(_single_op_model(2, TensorProto.FLOAT16)).run(None, {"q": q, "k": k, "v": v})
    assert out.dtype == np.float16
    expected = criss_cross_attention(*(torch.from_numpy(t).float() for t in (q, k, v))).numpy()
    np.testing.assert_allclose(out.astype(np.float32), expected, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------- fp16, CCNet3D


def test_fp16_export_computes_in_half_and_keeps_float32_io(onnx_2d_fp16, checkpoint_2d) -> None:
    model = onnx.load(onnx_2d_fp16.model_path)
    weights = [t for t in model.graph.initializer if t.name.startswith("network.")]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    casts = [
        helper.get_attribute_value(n.attribute[0]) for n in model.graph.node if n.op_type == "Cast"
    ]
    assert casts == [TensorProto.FLOAT16, TensorProto.FLOAT]  # after normalising, before logits
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    sidecar = read_sidecar(onnx_2d_fp16.model_path)
    assert sidecar["dtype"] == "fp16"
    assert sidecar["parity"]["criterion"]["min_argmax_agreement"] == 0.999
    for case in sidecar["parity"]["cases"]:
        assert case["argmax_agreement"] >= 0.999
        assert case["relative_error"] < 1e-2  # fp16 noise, not a broken graph
    pixels = np.random.default_rng(7).uniform(0, 255, (1, 3, 48, 64)).astype(np.float32)
    (logits,) = _session(onnx_2d_fp16.model_path.read_bytes()).run(None, {"image": pixels})
    expected = _torch_logits(checkpoint_2d, pixels)
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.99


@pytest.mark.parametrize("frames", [1, 4])
def test_3d_export_has_dynamic_frames(onnx_3d, checkpoint_3d, frames: int) -> None:
    sidecar = read_sidecar(onnx_3d.model_path)
    assert sidecar["inputs"][0]["shape"] == ["batch", 3, "frames", "height", "width"]
    assert sidecar["model"]["video"] is True
    pixels = np.random.default_rng(8).uniform(0, 255, (1, 3, frames, 40, 32)).astype(np.float32)
    (logits,) = _session(onnx_3d.model_path.read_bytes()).run(None, {"clip": pixels})
    assert logits.shape == (1, NUM_CLASSES, frames, 40, 32)
    expected = _torch_logits(checkpoint_3d, pixels)
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()


# ---------------------------------------------------------------------------- --output mask


def test_mask_output_is_the_argmax_of_the_logits(onnx_2d, checkpoint_2d, tmp_path) -> None:
    """`--output mask`: uint8 class ids (N, H, W) equal to the argmax of the logits export."""
    import skimage.data

    from ccnet.export.onnx import export_onnx
    from ccnet.export.runtime.sidecar import read_sidecar
    from tests.export.conftest import CHECK_SIZES_2D

    result = export_onnx(
        checkpoint_2d, tmp_path, output="mask", check_sizes=CHECK_SIZES_2D, progress=None
    )
    sidecar = read_sidecar(result.model_path)
    assert sidecar["output"] == "mask"
    assert sidecar["outputs"] == [
        {"name": "mask", "dtype": "uint8", "shape": ["batch", "height", "width"]}
    ]
    photo = np.asarray(skimage.data.chelsea())[:100, :131]  # not a multiple of 8
    pixels = np.ascontiguousarray(photo.transpose(2, 0, 1)[None], dtype=np.float32)
    (mask,) = _session(result.model_path.read_bytes()).run(None, {"image": pixels})
    (logits,) = _session(onnx_2d.model_path.read_bytes()).run(None, {"image": pixels})
    assert mask.dtype == np.uint8 and mask.shape == (1, 100, 131)
    np.testing.assert_array_equal(mask, logits.argmax(axis=1))
    assert logits.nbytes / mask.nbytes == 4 * logits.shape[1]


def test_the_service_refuses_a_mask_export(tmp_path, checkpoint_2d) -> None:
    from ccnet.export.onnx import export_onnx
    from ccnet.inference.segmenter import Segmenter
    from tests.export.conftest import CHECK_SIZES_2D

    result = export_onnx(
        checkpoint_2d, tmp_path, output="mask", check_sizes=CHECK_SIZES_2D, progress=None
    )
    with pytest.raises(ValueError, match="--output mask"):
        Segmenter.from_file(result.model_path)


def test_triton_repository_has_a_labels_file(onnx_2d, tmp_path) -> None:
    from ccnet.export.triton import write_triton_repository

    written = write_triton_repository(onnx_2d.model_path, tmp_path, "seg", progress=None)
    labels = (written.model_dir / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == ["road", "car", "sky"]
    assert 'label_filename: "labels.txt"' in written.config_path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------- fp16 resolution


def test_fp16_criterion_forgives_ties_only() -> None:
    """Flips where the reference's top-2 margin is within fp16's resolution are forgiven;
    a flip of a decided pixel counts, and a model of near-ties cannot pass."""
    from ccnet.export.parity import compare_logits, onnx_criterion

    rng = np.random.default_rng(0)
    reference = rng.normal(0, 4, (1, 3, 50, 40)).astype(np.float32)
    reference[0, 0, 0, 0] = 8.0  # the logit scale
    criterion = onnx_criterion("fp16")
    top = reference.argmax(axis=1)
    tie = np.zeros_like(reference)
    # make 0.4% of pixels near-ties (margin 1e-3 << 8 / 1024), and flip them in the candidate
    tied = [(i // 40, i % 40) for i in range(1, 2000, 250)]
    candidate = reference.copy()
    for y, x in tied:
        k = top[0, y, x]
        other = (k + 1) % 3
        reference[0, other, y, x] = reference[0, k, y, x] - 1e-3
        candidate[0, other, y, x] = reference[0, k, y, x] + 1e-3
    case = compare_logits(candidate + tie, reference, criterion, "synthetic")
    assert case.argmax_agreement < 0.999 and case.resolved_agreement == 1.0 and case.passed
    # flip three clearly decided pixels as well: now it fails
    for y, x in ((10, 1), (20, 2), (30, 3)):
        k = top[0, y, x]
        candidate[0, k, y, x] = -100.0
    assert not compare_logits(candidate, reference, criterion, "synthetic").passed
    # all pixels near-ties: nothing fp16 could decide, so nothing passes
    flat = np.zeros((1, 3, 8, 8), dtype=np.float32)
    flat[0, 0, 0, 0] = 1.0
    assert not compare_logits(flat, flat, criterion, "ties").passed
