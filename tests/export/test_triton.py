"""Triton model repository: config.pbtxt agrees with the ONNX it points to; the image interface
(UINT8 images in, the mask out) gives the service pipeline's masks; engines; atomicity."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from ccnet.export.triton import write_triton_repository

ONNX_TO_TRITON = {
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.UINT8: "TYPE_UINT8",
}


def parse_pbtxt(text: str) -> dict:
    """Minimal protobuf text-format reader (messages, lists, scalars), written for this test:
    every field maps to a list of values, since any field may repeat."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,]+', text)
    position = 0

    def scalar(token: str) -> object:
        if token.startswith('"'):
            return token[1:-1]
        return int(token) if re.fullmatch(r"-?\d+", token) else token

    def value() -> object:
        nonlocal position
        token = tokens[position]
        position += 1
        if token == "{":
            return message("}")
        if token == "[":
            items = []
            while tokens[position] != "]":
                items.append(value())
                if tokens[position] == ",":
                    position += 1
            position += 1
            return items
        return scalar(token)

    def message(end: str | None) -> dict:
        nonlocal position
        fields: dict[str, list] = {}
        while position < len(tokens) and tokens[position] != end:
            name = tokens[position]
            position += 1
            if tokens[position] == ":":
                position += 1
            fields.setdefault(name, []).append(value())
        position += 1
        return fields

    return message(None)


def _flatten_lists(values: list) -> list:
    """`input [ {..}, {..} ]` and repeated `input {..}` both become a list of messages."""
    out = []
    for item in values:
        out.extend(item if isinstance(item, list) else [item])
    return out


def _expected_tensors(values: list[onnx.ValueInfoProto], batched: bool) -> list[dict]:
    expected = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [-1 if d.dim_param else d.dim_value for d in tensor.shape.dim]
        expected.append(
            {
                "name": [value.name],
                "data_type": [ONNX_TO_TRITON[tensor.elem_type]],
                "dims": [dims[1:] if batched else dims],
            }
        )
    return expected


def _assert_config_matches_onnx(config: dict, model: onnx.ModelProto, max_batch: int) -> None:
    batched = max_batch > 0
    assert config["max_batch_size"] == [max_batch]
    assert _flatten_lists(config["input"]) == _expected_tensors(list(model.graph.input), batched)
    outputs = _expected_tensors(list(model.graph.output), batched)
    outputs[0]["label_filename"] = ["labels.txt"]  # the class names, line i = class id i
    assert _flatten_lists(config["output"]) == outputs
    assert ("dynamic_batching" in config) == batched


@pytest.mark.parametrize("fixture", ["onnx_2d", "onnx_3d"])
def test_onnx_repository_config_agrees_with_the_onnx(request, fixture: str, tmp_path) -> None:
    source = request.getfixturevalue(fixture).model_path
    result = write_triton_repository(source, tmp_path / "repo", "seg", progress=None)
    config = parse_pbtxt(result.config_path.read_text())
    assert config["name"] == ["seg"]
    assert config["platform"] == ["onnxruntime_onnx"]
    version = tmp_path / "repo" / "seg" / "1"
    model = onnx.load(version / "model.onnx")
    _assert_config_matches_onnx(config, model, max_batch=8)
    inputs = _flatten_lists(config["input"])
    if fixture == "onnx_3d":  # clip models keep the network's tensors
        assert inputs[0]["dims"][0] == [3, -1, -1, -1]
        assert model.SerializeToString() == onnx.load(source).SerializeToString()
    else:  # image models speak /v2's language: UINT8 pixels in, the mask out
        assert inputs == [{"name": ["image"], "data_type": ["TYPE_UINT8"], "dims": [[-1, -1, 3]]}]
        outputs = _flatten_lists(config["output"])
        assert [(o["name"], o["data_type"], o["dims"]) for o in outputs] == [
            (["mask"], ["TYPE_UINT8"], [[-1, -1]])
        ]
    assert sorted(p.name for p in version.iterdir()) == ["model.json", "model.onnx"]
    classes = json.loads((version / "model.json").read_text())["classes"]
    assert (version.parent / "labels.txt").read_text().splitlines() == classes
    digest = hashlib.sha256((version / "model.onnx").read_bytes()).hexdigest()
    assert json.loads((version / "model.json").read_text())["sha256"] == digest
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "tritonserver --model-repository=" in readme
    assert "No plugin is needed" in readme and "LD_PRELOAD" not in readme
    interface = "tensor" if fixture == "onnx_3d" else "image"
    assert f"| `seg` | `onnxruntime_onnx` | {interface} |" in readme


def test_no_batching_keeps_the_batch_dim(onnx_2d, tmp_path) -> None:
    result = write_triton_repository(
        onnx_2d.model_path, tmp_path, "seg", max_batch=0, progress=None
    )
    config = parse_pbtxt(result.config_path.read_text())
    model = onnx.load(result.model_dir / "1" / "model.onnx")
    _assert_config_matches_onnx(config, model, max_batch=0)
    assert _flatten_lists(config["input"])[0]["dims"] == [[-1, -1, -1, 3]]


def _photographs() -> list[np.ndarray]:
    """Real photographs at three sizes, two of them off the stride of 8 in both axes."""
    import skimage.data

    return [
        np.ascontiguousarray(skimage.data.chelsea()[::3, ::3]),  # 100×151
        np.ascontiguousarray(skimage.data.coffee()[:75, :57]),  # 75×57
        np.ascontiguousarray(skimage.data.astronaut()[::4, ::4]),  # 128×128
    ]


@pytest.mark.parametrize("logits", [False, True], ids=["mask", "mask+logits"])
def test_image_interface_gives_the_pipelines_masks(onnx_2d, tmp_path, logits: bool) -> None:
    """The repository's graph, fed the UINT8 image as /v2 takes it, returns exactly what the
    service's pipeline (pad by edge replication, the network, crop, argmax) makes of it."""
    from ccnet.export.parity import onnxruntime_session
    from ccnet.inference.pipeline import labels_from_logits, logits_to_size, prepare_image
    from ccnet.inference.segmenter import Segmenter

    result = write_triton_repository(
        onnx_2d.model_path, tmp_path, "seg", logits=logits, progress=None
    )
    session = onnxruntime_session((result.model_dir / "1" / "model.onnx").read_bytes())
    wanted = ["mask", "logits"] if logits else ["mask"]
    assert [o.name for o in session.get_outputs()] == wanted
    with Segmenter.from_file(onnx_2d.model_path, backend="onnxruntime") as segmenter:
        for photo in _photographs():
            got = session.run(wanted, {"image": photo[None]})
            prepared = prepare_image(photo, max_side=1024)
            scores = segmenter.backend.infer(prepared.pixels[None])[0]
            mask = labels_from_logits(scores, prepared.scaled, prepared.size)
            assert got[0].dtype == np.uint8, photo.shape
            assert got[0][0].tobytes() == mask.tobytes(), photo.shape
            assert got[0][0].tobytes() == segmenter(photo).mask.tobytes(), photo.shape
            if logits:
                expected = logits_to_size(scores, prepared.scaled, prepared.size)
                np.testing.assert_array_equal(got[1][0], expected, err_msg=str(photo.shape))
    sidecar = json.loads((result.model_dir / "1" / "model.json").read_text())
    assert sidecar["interface"] == "image" and sidecar["input_policy"]["dtype"] == "uint8"
    assert sidecar["network_sha256"] == onnx_2d.sidecar["sha256"]
    with pytest.raises(ValueError, match="image interface"):
        Segmenter.from_file(result.model_dir / "1" / "model.onnx", backend="onnxruntime")


def test_tensor_interface_on_request(onnx_2d, tmp_path) -> None:
    result = write_triton_repository(
        onnx_2d.model_path, tmp_path, "seg", interface="tensor", progress=None
    )
    assert (result.model_dir / "1" / "model.onnx").read_bytes() == onnx_2d.model_path.read_bytes()
    _assert_config_matches_onnx(
        parse_pbtxt(result.config_path.read_text()), onnx.load(onnx_2d.model_path), max_batch=8
    )


def test_interface_choices_that_cannot_apply_are_refused(onnx_2d, onnx_3d, tmp_path) -> None:
    with pytest.raises(ValueError, match="a clip model keeps the tensor interface"):
        write_triton_repository(
            onnx_3d.model_path, tmp_path, "clip", interface="image", progress=None
        )
    plan = _fake_engine(onnx_2d, tmp_path / "build", batch=(1, 8))
    with pytest.raises(ValueError, match="a TensorRT engine keeps the tensor interface"):
        write_triton_repository(
            onnx_2d.model_path, tmp_path, "seg", engine=plan, interface="image", progress=None
        )
    with pytest.raises(ValueError, match="logits output is an option of the image interface"):
        write_triton_repository(
            onnx_2d.model_path, tmp_path, "seg", interface="tensor", logits=True, progress=None
        )
    with pytest.raises(ValueError, match="interface must be one of image, tensor"):
        write_triton_repository(onnx_2d.model_path, tmp_path, "seg", interface="nhwc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def _fake_engine(onnx_2d, directory: Path, batch: tuple[int, int]) -> Path:
    """An engine file and the sidecar `ccnet export tensorrt` would write (no GPU needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    plan = directory / "engine.plan"
    plan.write_bytes(b"serialized engine")
    meta = onnx_2d.sidecar
    sidecar = {
        "format": "ccnet-trt-engine",
        "version": 1,
        "engine_file": "engine.plan",
        "sha256": hashlib.sha256(b"serialized engine").hexdigest(),
        "onnx": {"sha256": hashlib.sha256(onnx_2d.model_path.read_bytes()).hexdigest()},
        "tensorrt": "11.4.0",
        **{key: meta[key] for key in ("dtype", "inputs", "outputs", "classes", "palette")},
        "profile": {
            "image": {
                "min": [batch[0], 3, 64, 64],
                "opt": [batch[1], 3, 256, 256],
                "max": [batch[1], 3, 512, 512],
            }
        },
    }
    (directory / "engine.json").write_text(json.dumps(sidecar))
    return plan


def test_engine_repository_uses_the_plan_and_documents_the_plugin(onnx_2d, tmp_path) -> None:
    plan = _fake_engine(onnx_2d, tmp_path / "build", batch=(1, 8))
    result = write_triton_repository(
        onnx_2d.model_path, tmp_path / "repo", "seg_trt", engine=plan, progress=None
    )
    config = parse_pbtxt(result.config_path.read_text())
    assert config["platform"] == ["tensorrt_plan"]
    _assert_config_matches_onnx(config, onnx.load(onnx_2d.model_path), max_batch=8)
    version = result.model_dir / "1"
    assert (version / "model.plan").read_bytes() == b"serialized engine"
    assert json.loads((version / "model.json").read_text())["engine_file"] == "model.plan"
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=" in readme
    assert "LD_PRELOAD=/path/to/libccnet_trt_plugin.so tritonserver" in readme
    assert "registers its plugin creators as soon as it is loaded" in " ".join(readme.split())


def test_a_damaged_engine_sidecar_is_refused_with_its_problem(onnx_2d, tmp_path) -> None:
    plan = _fake_engine(onnx_2d, tmp_path / "build", batch=(1, 8))
    plan.write_bytes(b"another engine")  # no longer the file the sidecar describes
    with pytest.raises(ValueError, match="SHA-256 differs"):
        write_triton_repository(
            onnx_2d.model_path, tmp_path / "repo", "seg", engine=plan, progress=None
        )
    side = plan.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "version": 7}))
    with pytest.raises(ValueError, match="engine sidecar version 7"):
        write_triton_repository(
            onnx_2d.model_path, tmp_path / "repo", "seg", engine=plan, progress=None
        )
    assert not (tmp_path / "repo" / "seg").exists()


def test_engine_profile_must_cover_the_batch(onnx_2d, tmp_path) -> None:
    plan = _fake_engine(onnx_2d, tmp_path / "build", batch=(1, 4))
    with pytest.raises(ValueError, match=r"covers batch 1\.\.4"):
        write_triton_repository(
            onnx_2d.model_path, tmp_path / "repo", "seg", engine=plan, max_batch=8, progress=None
        )
    assert not (tmp_path / "repo" / "seg").exists()


def test_engine_built_from_another_onnx_is_refused(onnx_2d, onnx_3d, tmp_path) -> None:
    plan = _fake_engine(onnx_2d, tmp_path / "build", batch=(1, 8))
    with pytest.raises(ValueError, match="built from another ONNX"):
        write_triton_repository(
            onnx_3d.model_path, tmp_path / "repo", "seg", engine=plan, progress=None
        )


def test_rewrite_replaces_the_model_and_leaves_no_staging(onnx_2d, tmp_path) -> None:
    repo = tmp_path / "repo"
    write_triton_repository(onnx_2d.model_path, repo, "seg", max_batch=4, progress=None)
    (repo / "seg" / "stale.txt").write_text("from the previous version")
    write_triton_repository(onnx_2d.model_path, repo, "seg", max_batch=2, progress=None)
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "seg"]
    assert not (repo / "seg" / "stale.txt").exists()
    assert parse_pbtxt((repo / "seg" / "config.pbtxt").read_text())["max_batch_size"] == [2]


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "sp ace"])
def test_bad_model_names_are_refused(onnx_2d, tmp_path, name: str) -> None:
    with pytest.raises(ValueError, match="model name"):
        write_triton_repository(onnx_2d.model_path, tmp_path, name, progress=None)


def test_checkpoint_source_is_exported_first(onnx_2d, checkpoint_2d, tmp_path, monkeypatch):
    """A checkpoint goes through export_onnx (stubbed here with the session's export)."""
    import ccnet.export.onnx

    calls = []

    def fake_export(checkpoint, output_dir, **kwargs):
        calls.append((Path(checkpoint), kwargs["dtype"], kwargs["opset"]))
        out = Path(output_dir)
        out.mkdir(parents=True)
        for path in (onnx_2d.model_path, onnx_2d.sidecar_path):
            shutil.copyfile(path, out / path.name)
        return ccnet.export.onnx.OnnxExport(out / "model.onnx", out / "model.json", onnx_2d.sidecar)

    monkeypatch.setattr(ccnet.export.onnx, "export_onnx", fake_export)
    result = write_triton_repository(
        checkpoint_2d, tmp_path / "repo", "seg", dtype="fp16", opset=20, progress=None
    )
    assert calls == [(checkpoint_2d, "fp16", 20)]
    sidecar = json.loads((result.model_dir / "1" / "model.json").read_text())
    assert sidecar["network_sha256"] == onnx_2d.sidecar["sha256"]  # the export it wraps
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["README.md", "seg"]
