"""TensorRT engine builder: shapes, profile validation, plugin lookup, the no-TensorRT stop.

Building an engine needs TensorRT and a GPU; that test is marked `gpu` and skips elsewhere.
"""

from __future__ import annotations

import onnx
import pytest

from ccnet_cli import main
from export import engine
from export.engine import ShapeProfile, parse_shape, tensorrt_unavailable_reason

NO_TENSORRT = tensorrt_unavailable_reason()


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("1x3x128x128", (1, 3, 128, 128)),
        ("2X3x4x64x96", (2, 3, 4, 64, 96)),
        (" 1x3x8x8 ", (1, 3, 8, 8)),
    ],
)
def test_parse_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1x3x128", "has 3 dims"),
        ("1x3x1x2x3x4", "has 6 dims"),
        ("1x4x64x64", "must be 3"),
        ("0x3x64x64", "below 1"),
        ("1x3x64x-4", "is not like"),
        ("1,3,64,64", "is not like"),
        ("", "is not like"),
    ],
)
def test_parse_shape_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_shape(text)


def test_profile_needs_ordered_bounds_of_one_rank() -> None:
    ShapeProfile((1, 3, 64, 64), (1, 3, 128, 128), (4, 3, 256, 256))  # valid
    with pytest.raises(ValueError, match="dim 2: need min <= opt <= max"):
        ShapeProfile((1, 3, 256, 64), (1, 3, 128, 128), (4, 3, 512, 256))
    with pytest.raises(ValueError, match="same number of dims"):
        ShapeProfile((1, 3, 64, 64), (1, 3, 2, 64, 64), (1, 3, 2, 64, 64))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min", "1x3x64", "--opt", "1x3x64x64", "--max", "1x3x64x64"], "has 3 dims"),
        (["--min", "1x3x64x64", "--opt", "1x3x32x64", "--max", "1x3x64x64"], "min <= opt"),
    ],
)
def test_cli_rejects_bad_shapes_with_status_2(tmp_path, capsys, args, message) -> None:
    argv = ["export", "tensorrt", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "e.plan"), *args]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's type errors
        code = exit_info.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT and a GPU are present")
def test_without_tensorrt_it_stops_first_with_a_clear_message(tmp_path, capsys) -> None:
    """The TensorRT check comes before anything else: the missing ONNX is not even looked at."""
    plan = tmp_path / "out" / "e.plan"
    argv = [
        "export", "tensorrt", str(tmp_path / "missing.onnx"), "-o", str(plan),
        "--min", "1x3x64x64", "--opt", "1x3x128x128", "--max", "2x3x256x256",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ccnet export: error: TensorRT")
    assert "missing.onnx" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="TensorRT"):
        engine.build_engine(
            tmp_path / "missing.onnx",
            tmp_path / "e.plan",
            ShapeProfile((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8)),
        )


def test_plugin_lookup(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(engine.PLUGIN_ENV, raising=False)
    monkeypatch.setattr(engine, "DEFAULT_PLUGIN", tmp_path / "not-built.so")
    assert engine.resolve_plugin(None) is None  # attention then runs as standard layers
    with pytest.raises(FileNotFoundError, match="plugin library not found"):
        engine.resolve_plugin(tmp_path / "nope.so")
    library = tmp_path / "libccnet_trt_plugin.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setenv(engine.PLUGIN_ENV, str(library))
    assert engine.resolve_plugin(None) == library


def test_with_a_plugin_the_parser_gets_no_attention_functions(onnx_2d) -> None:
    """So no TensorRT parser version can pick the function body over the plugin."""
    stripped = onnx.load_from_string(engine._model_bytes(onnx_2d.model_path, True))
    assert not stripped.functions
    assert [n.op_type for n in stripped.graph.node if n.domain == "ccnet"] == [
        "CrissCrossAttention"
    ] * 2
    kept = onnx.load_from_string(engine._model_bytes(onnx_2d.model_path, False))
    assert [f.name for f in kept.functions] == ["CrissCrossAttention"]


@pytest.mark.gpu
@pytest.mark.skipif(NO_TENSORRT is not None, reason=str(NO_TENSORRT))
def test_engine_builds_and_matches_onnxruntime(onnx_2d, tmp_path) -> None:
    """With $CCNET_TRT_PLUGIN (or build/trt/) the plugin is used, else standard layers."""
    profile = ShapeProfile((1, 3, 32, 32), (2, 3, 96, 128), (4, 3, 160, 160))
    result = engine.build_engine(onnx_2d.model_path, tmp_path / "engine.plan", profile)
    check = result.sidecar["check"]
    assert check["passed"] and check["cases"][0]["argmax_agreement"] >= 0.999
    assert result.engine_path.stat().st_size > 0
    if result.sidecar["plugin"] is not None:
        assert result.sidecar["plugin_layers"] == 2
