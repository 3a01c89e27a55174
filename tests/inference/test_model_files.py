"""Issue 21 #8, #11, #13 (and issue 22 #2): a model file is untrusted input.

Numbers and names from a checkpoint's or sidecar's metadata are bounded before anything is
built from them; a sidecar's recorded file names never lead out of its folder, and a sidecar
describes the export beside it with its own stem.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ccnet.export.runtime.sidecar import SIDECAR_FORMAT, SIDECAR_VERSION, read_sidecar
from ccnet.inference.backends.base import info_from_meta
from ccnet.inference.backends.loading import load_backend
from ccnet.inference.demo import BUNDLED_MODELS
from ccnet.inference.metadata import MetadataError
from ccnet.inference.options import LoadOptions
from ccnet.inference.precision.select import training_generator
from ccnet.model import build_model, save_checkpoint
from ccnet.model.files import file_sha256
from ccnet.model.model_config import ModelConfig


def _meta(**changes: object) -> dict:
    meta = {
        "classes": ["road", "sky"],
        "palette": [[1, 2, 3], [4, 5, 6]],
        "config": {"name": "tiny", "video": True, "clip_length": 4},
        "provenance": {"data_generator": {"name": "ccnet synth", "size": 128, "seed": 0}},
    }
    meta.update(changes)
    return meta


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"config": {"name": "t", "video": True, "clip_length": 4096}}, "clip_length"),
        ({"provenance": {"data_generator": {"name": "ccnet synth", "size": 16384}}}, "size"),
        ({"provenance": {"checkpoint": {"data_generator": {"size": -1}}}}, "size"),
        ({"classes": [f"c{i}" for i in range(5000)], "palette": [[0, 0, 0]] * 5000}, "classes"),
        ({"classes": ["road", "x" * 500]}, "class 1"),
        ({"classes": ["road", "sky\x1b[31m"]}, "control characters"),
        ({"palette": [[1, 2, 3], [4, 5, 999]]}, "palette"),
        ({"config": {"name": "Привет", "video": False}}, "ASCII letters"),
        ({"config": {"name": "x" * 200, "video": False}}, "1 to 128"),
    ],
    ids=[
        "clip_length",
        "generator_size",
        "nested_generator",
        "class_count",
        "class_name_length",
        "class_name_ansi",
        "palette",
        "non_latin_name",
        "long_name",
    ],
)
def test_metadata_out_of_bounds_is_refused(changes: dict, field: str) -> None:
    with pytest.raises(MetadataError, match=field):
        info_from_meta(None, _meta(**changes), Path("bad.pt"))


def test_the_gate_never_renders_scenes_of_an_unbounded_size() -> None:
    bad = _meta(provenance={"data_generator": {"name": "ccnet synth", "size": 16384}})
    with pytest.raises(MetadataError, match=r"data_generator\.size"):
        training_generator(bad)
    assert training_generator(_meta())["size"] == 128


def test_a_file_name_that_is_no_safe_model_name_is_refused() -> None:
    with pytest.raises(MetadataError, match="ASCII letters"):
        info_from_meta(None, _meta(config={"video": False}), Path("modèle ☃.pt"))


def test_model_config_sizes_are_bounded_before_layers_are_built() -> None:
    with pytest.raises(ValueError, match="clip_length must be at most 64"):
        ModelConfig(name="x", depth=18, video=True, clip_length=4096)
    with pytest.raises(ValueError, match="num_classes must be at most 1024"):
        ModelConfig(name="x", depth=18, num_classes=10**7)


def test_a_checkpoint_claiming_a_huge_gate_scene_is_refused_at_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("ccnet-tiny", num_classes=2).eval()
    path = save_checkpoint(
        model,
        {
            "classes": ["a", "b"],
            "provenance": {"data_generator": {"name": "ccnet synth", "size": 16384, "seed": 1}},
        },
        tmp_path / "huge.pt",
    )
    del path
    with pytest.raises(MetadataError, match=r"data_generator\.size"):
        load_backend(None, tmp_path / "huge.pt", LoadOptions(backend="torch", precision="auto"))


def test_bundled_models_pass_the_checks() -> None:
    for path in BUNDLED_MODELS:
        backend = load_backend(None, path, LoadOptions(backend="torch", precision="fp32"))
        assert backend.info.name == path.stem


# ---------------------------------------------------------------- sidecars (#11, issue 22 #2)


def _pair(folder: Path, stem: str, model_file: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    onnx = folder / f"{stem}.onnx"
    onnx.write_bytes(b"not really a graph, but the bytes the sidecar describes")
    sidecar = folder / f"{stem}.json"
    sidecar.write_text(
        json.dumps(
            {
                "format": SIDECAR_FORMAT,
                "version": SIDECAR_VERSION,
                "model_file": model_file,
                "sha256": file_sha256(onnx),
                "classes": ["a"],
                "palette": [[0, 0, 0]],
                "dtype": "fp32",
                "opset": 18,
                "inputs": [],
                "outputs": [],
            }
        )
    )
    return onnx, sidecar


def test_a_renamed_pair_still_matches(tmp_path: Path) -> None:
    """``model.onnx`` + ``model.json`` renamed ``mine.*``: the sidecar describes ``mine.onnx``."""
    onnx, sidecar = _pair(tmp_path, "mine", "model.onnx")
    assert read_sidecar(onnx)["classes"] == ["a"]
    assert read_sidecar(sidecar)["classes"] == ["a"]
    lonely, _ = _pair(tmp_path / "other", "lonely", "model.onnx")
    assert read_sidecar(lonely)["classes"] == ["a"]


@pytest.mark.parametrize(
    "recorded", ["../secret.onnx", "/etc/passwd", "sub/model.onnx", "..", "a\\b.onnx"]
)
def test_a_recorded_file_name_never_leads_out_of_the_folder(tmp_path: Path, recorded) -> None:
    """No file-existence or SHA-256 oracle: a path in ``model_file`` is refused as such."""
    (tmp_path / "secret.onnx").write_bytes(b"outside")
    onnx, _ = _pair(tmp_path / "models", "model", recorded)
    with pytest.raises(ValueError, match="must name a file in the sidecar's own folder"):
        read_sidecar(onnx)
    with pytest.raises(ValueError, match="must name a file in the sidecar's own folder"):
        read_sidecar(onnx, verify=False)


# ---------------------------------------------------------------- a refused pickle (#16)


class _Payload:
    """Unpickling this would run a shell command; weights_only must refuse it."""

    def __reduce__(self):
        import os

        return (os.system, ("echo should-never-run",))


@pytest.mark.parametrize(
    ("payload", "named"),
    [(_Payload(), "posix.system"), (torch.nn.Linear(1, 1), "torch.nn.modules.linear.Linear")],
    ids=["blocked_module", "unallowed_class"],
)
def test_a_refused_pickle_is_reported_in_our_words(tmp_path: Path, payload, named) -> None:
    from ccnet.model.checkpoint import load_plain

    path = tmp_path / "evil.pt"
    torch.save({"meta": {}, "state_dict": {}, "x": payload}, path)
    with pytest.raises(ValueError, match="refusing to load") as caught:
        load_plain(path)
    message = str(caught.value)
    assert named in message, message
    assert "weights_only" not in message and "\x1b" not in message
    assert caught.value.__cause__ is None  # torch's advice is not chained into reports
