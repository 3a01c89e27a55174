"""TensorRT engine builder and the runtime side: shapes, profile validation, plugin lookup, the
no-TensorRT stop, and the process-wide plugin loader against a real TensorRT registry.

The loader tests build the plugin library (nvcc and TensorRT's headers, no GPU) and load it
into the lean TensorRT runtime from PyPI, which runs without a GPU. Each scenario runs in a
fresh interpreter: a plugin registry lives as long as its process. Building an engine needs
TensorRT and a GPU; that test is marked `gpu` and skips elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from ccnet.cli import main
from ccnet.export import engine
from ccnet.export.engine import ShapeProfile, parse_shape, tensorrt_unavailable_reason
from ccnet.export.runtime import plugins
from tests.export import native_build

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
    monkeypatch.setattr(plugins, "DEFAULT_PLUGIN", tmp_path / "not-built.so")
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


# ---------------------------------------------------------------------------- plugin loading


@pytest.fixture(scope="module")
def plugin_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libccnet_trt_plugin.so built from this tree (skips, saying why, without the tools)."""
    missing = native_build.lean_runtime_missing()
    if missing is not None:
        pytest.skip(missing)
    if native_build.find_nvcc() is None or native_build.find_cuda_include() is None:
        pytest.skip("nvcc / the CUDA headers not found: install the CUDA toolkit or set CUDA_HOME")
    if native_build.find_cxx() is None:
        pytest.skip("no C++ compiler (g++ / c++ / $CXX) found")
    include = native_build.find_tensorrt_include()
    if include is None:
        pytest.skip(native_build.NO_TENSORRT_HEADERS)
    return native_build.build_plugin(tmp_path_factory.mktemp("plugin"), include)


_PRELUDE = """
import ctypes, json, sys
from pathlib import Path
library = Path(sys.argv[1])
def ours():
    from ccnet.export.runtime.plugins import registered_creators
    return [c for c in registered_creators() if c[0].startswith("CrissCrossAttention")]
"""
BOTH_ONCE = [["CrissCrossAttention", "1", ""], ["CrissCrossAttention3d", "1", ""]]


def _scenario(body: str, library: Path, *extra: str) -> dict:
    """Run ``body`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run(
        [sys.executable, "-c", _PRELUDE + body, str(library), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=native_build.ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_loading_a_library_twice_through_the_loader(plugin_library: Path, tmp_path: Path):
    """Twice by path and once through a symlink: one load, both creators listed once; a
    second plain loadLibrary is what fails (returns null), which is why the loader exists."""
    link = tmp_path / "libccnet-link.so"
    link.symlink_to(plugin_library)
    result = _scenario(
        """
from ccnet.export.runtime.availability import plugin_runtime
from ccnet.export.runtime.plugins import load_plugin, loaded_plugins
ops = [{"op_type": "CrissCrossAttention", "plugin_version": "1", "plugin_namespace": ""}]
first = load_plugin(library, required=ops)
second = load_plugin(library, required=ops)
third = load_plugin(sys.argv[2])
again = plugin_runtime().get_plugin_registry().load_library(str(library))
print(json.dumps({"same": first is second is third, "loaded": len(loaded_plugins()),
                  "handle": first.handle is not None, "creators": ours(),
                  "plain_second_load": again is not None}))
""",
        plugin_library,
        str(link),
    )
    assert result == {
        "same": True,
        "loaded": 1,
        "handle": True,
        "creators": BOTH_ONCE,
        "plain_second_load": False,
    }


def test_a_plain_dlopen_registers_both_creators(plugin_library: Path) -> None:
    """As LD_PRELOAD or Triton's plugins= option load it: the creators are there, once; then
    loadLibrary still works (and owns them: deregisterLibrary removes them), and the loader,
    finding them registered, does not load again."""
    result = _scenario(
        """
from ccnet.export.runtime.availability import plugin_runtime
from ccnet.export.runtime.plugins import load_plugin
registry = plugin_runtime().get_plugin_registry()
ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
after_dlopen = ours()
handle = registry.load_library(str(library))
after_load_library = ours()
registry.deregister_library(handle)
after_deregister = ours()
ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)  # already open: nothing runs again
loaded = load_plugin(library)
print(json.dumps({"dlopen": after_dlopen, "load_library": handle is not None,
                  "after_load_library": after_load_library, "deregistered": after_deregister,
                  "loader": [loaded.handle is not None, ours()]}))
""",
        plugin_library,
    )
    assert result["dlopen"] == BOTH_ONCE, "a plain dlopen must register both creators"
    assert result["load_library"] and result["after_load_library"] == BOTH_ONCE
    assert result["deregistered"] == []
    assert result["loader"] == [True, BOTH_ONCE]


def test_a_dlopen_before_tensorrt_leaves_load_library_working(plugin_library: Path) -> None:
    """No TensorRT in the process yet: the library finds no registry at load time (unless a
    libnvinfer.so.N is on the library path, which it then loads as a link would), and the
    loader still ends with both creators registered once."""
    result = _scenario(
        """
ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
from ccnet.export.runtime.plugins import load_plugin
load_plugin(library)
print(json.dumps({"creators": ours()}))
""",
        plugin_library,
    )
    assert result == {"creators": BOTH_ONCE}


_TWO_MODELS = """
import shutil, types
import numpy as np
from ccnet.export import engine as engine_module, prepare
from ccnet.export.runtime import availability, runner
from ccnet.inference.backends import load_backend
from ccnet.service.cli import _prepare_models
from ccnet.service.core.config import Settings

onnx_a, cache = Path(sys.argv[2]), Path(sys.argv[3])
onnx_b = cache.parent / "b" / "model.onnx"
shutil.copytree(onnx_a.parent, onnx_b.parent)
lean = availability.plugin_runtime()
registry = lean.get_plugin_registry()
loads = []

class CountingRegistry:  # the real registry; only load_library calls are counted
    def __getattr__(self, name):
        return getattr(registry, name)

    def load_library(self, path):
        loads.append(path)
        return registry.load_library(path)

trt = types.SimpleNamespace(__name__=lean.__name__, __version__=lean.__version__,
                            get_plugin_registry=CountingRegistry)

# Only what needs a GPU is replaced: TensorRT's builder and the engine's execution.
def require_tensorrt():
    return trt

def build_and_check(trt, source, meta, profile, library, workspace_gib, engine_path, say):
    assert ours() == BOTH, "the plugin must be registered before the build"
    data = b"engine for " + str(source).encode()
    return engine_module._Built(data, 2, {"passed": True}, "Test GPU")

class GpuFreeRunner:
    def __init__(self, trt, serialized, *, label):
        assert ours() == BOTH, "the plugin must be registered before deserialising"
        self.min_shape, self.max_shape = (1, 3, 8, 8), (8, 3, 1024, 1024)

    def accepts(self, shape):
        return True

    def run(self, batch):
        return np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32)

BOTH = [("CrissCrossAttention", "1", ""), ("CrissCrossAttention3d", "1", "")]
availability.require_tensorrt = prepare.require_tensorrt = require_tensorrt
engine_module.require_tensorrt = require_tensorrt
availability.gpu_name = lambda: "Test GPU"
engine_module._build_and_check = build_and_check
runner.EngineRunner = GpuFreeRunner

settings = Settings(backend="tensorrt", models=[f"a={onnx_a}", f"b={onnx_b}"], cache_dir=cache,
                    trt_plugin=library, log_format="text")
_prepare_models(settings)  # what `ccnet serve` runs before its workers
options = settings.load_options()
backends = [load_backend(name, path, options) for name, path in settings.model_sources()]
print(json.dumps({"loads": len(loads), "backends": [(b.info.name, b.name) for b in backends],
                  "creators": ours(),
                  "engines": len(list(cache.glob("tensorrt/*/engine.plan")))}))
"""


def test_two_tensorrt_models_load_the_plugin_once(plugin_library, onnx_2d, tmp_path) -> None:
    """The serve prepare step builds two engines and the loader then opens both models: one
    loadLibrary in all (a second one would have failed), both creators registered once."""
    result = _scenario(
        _TWO_MODELS, plugin_library, str(onnx_2d.model_path), str(tmp_path / "cache")
    )
    assert result == {
        "loads": 1,
        "backends": [["a", "tensorrt"], ["b", "tensorrt"]],
        "creators": BOTH_ONCE,
        "engines": 2,
    }


# ---------------------------------------------------------------------------- cache keys


def test_prepared_artifacts_are_keyed_by_content_and_build(onnx_2d, tmp_path, monkeypatch):
    """The cache key of the ONNX follows the checkpoint's bytes (not its name or time); the
    engine's follows the ONNX, the profile, the TensorRT version, the plugin build and the GPU."""
    from ccnet.export.runtime import artifacts, availability

    cache = tmp_path / "cache"
    first = tmp_path / "a" / "tiny.pt"
    first.parent.mkdir()
    first.write_bytes(b"checkpoint bytes")
    same = tmp_path / "b" / "tiny.pt"
    same.parent.mkdir()
    same.write_bytes(b"checkpoint bytes")
    other = tmp_path / "c" / "tiny.pt"
    other.parent.mkdir()
    other.write_bytes(b"other checkpoint bytes")
    assert artifacts.onnx_artifact(first, cache) == artifacts.onnx_artifact(same, cache)
    assert artifacts.onnx_artifact(first, cache) != artifacts.onnx_artifact(other, cache)
    with pytest.raises(artifacts.NotPreparedError, match="ccnet serve"):
        artifacts.prepared_onnx(first, cache)

    monkeypatch.setattr(availability, "gpu_name", lambda: "GPU A")
    limits = artifacts.ServeLimits(max_side=1024, max_video_side=512, max_batch_size=8)
    library = tmp_path / "libccnet_trt_plugin.so"
    library.write_bytes(b"plugin build 1")
    sidecar = onnx_2d.sidecar

    def path(**change):
        key = artifacts.engine_key(sidecar, limits, tensorrt_version="11.4", plugin=library)
        key = artifacts.EngineKey(**{**key.__dict__, **change})
        return artifacts.engine_artifact(onnx_2d.model_path, cache, key)

    base = path()
    assert base == path()
    assert base.name == "engine.plan" and base.parent.parent == cache / "tensorrt"
    variants = [
        path(tensorrt="11.5"),
        path(gpu="GPU B"),
        path(plugin_sha256=None),
        path(profile=((1, 3, 8, 8), (1, 3, 64, 64), (1, 3, 64, 64))),
    ]
    assert len({base, *variants}) == 5, "every part of the key must change the path"
    library.write_bytes(b"plugin build 2")  # a rebuilt plugin: another engine
    assert path() != base
    key = artifacts.engine_key(sidecar, limits, tensorrt_version="11.4", plugin=None)
    assert key.profile == ((1, 3, 8, 8), (8, 3, 512, 512), (8, 3, 1024, 1024))
