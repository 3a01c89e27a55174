"""The interchangeable backends: the same request gives the same mask on torch and ONNX
Runtime; TensorRT falls back to ONNX Runtime where it cannot run; wrong pairings are refused."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccnet.export.prepare import prepare_served
from ccnet.inference.backends import BackendError, load_backend
from ccnet.inference.options import LoadOptions
from ccnet.service.core.config import BUNDLED_MODELS
from tests.service.conftest import make_client, png_bytes

IMAGE_MODEL, VIDEO_MODEL = BUNDLED_MODELS


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One ONNX export of each demo model, shared by the tests of this module."""
    return tmp_path_factory.mktemp("ccnet-cache")


def _mask(client, data: bytes) -> np.ndarray:
    response = client.post("/v1/segment", files={"image": ("in.png", data, "image/png")})
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_torch_and_onnxruntime_give_the_same_masks(cache_dir, astronaut) -> None:
    import skimage.data

    photos = [
        png_bytes(astronaut[::2, ::2].copy()),
        png_bytes(np.asarray(skimage.data.coffee())),
        png_bytes(np.random.default_rng(7).integers(0, 256, (75, 131, 3), dtype=np.uint8)),
    ]
    with make_client(backend="torch", precision="fp32") as torch_client:
        torch_masks = [_mask(torch_client, photo) for photo in photos]
    with make_client(backend="onnxruntime", cache_dir=cache_dir, precision="fp32") as ort_client:
        models = ort_client.get("/v1/models").json()["models"]
        assert {m["backend"] for m in models} == {"onnxruntime"}
        assert {m["name"] for m in models} == {"ccnet-tiny", "ccnet3d-tiny"}
        ort_masks = [_mask(ort_client, photo) for photo in photos]
    assert list(cache_dir.glob("onnx/*/model.onnx")), "the export was cached"
    for index, (a, b) in enumerate(zip(torch_masks, ort_masks, strict=True)):
        assert a.shape == b.shape
        agreement = float((a == b).mean())
        # identical up to float rounding: a handful of near-tied pixels at most
        assert agreement >= 0.9999, f"photo {index}: {agreement:.6f} of pixels agree"


def test_onnxruntime_clip_matches_torch(cache_dir, gif_clip) -> None:
    params = {"output": "json"}
    files = {"video": ("clip.gif", gif_clip, "image/gif")}
    with make_client(backend="torch", precision="fp32") as torch_client:
        expected = torch_client.post("/v1/segment/video", params=params, files=files).json()
    with make_client(backend="onnxruntime", cache_dir=cache_dir, precision="fp32") as ort_client:
        actual = ort_client.post("/v1/segment/video", params=params, files=files).json()
    assert actual["frame_count"] == expected["frame_count"] == 24
    for ours, theirs in zip(actual["classes"], expected["classes"], strict=True):
        assert ours["id"] == theirs["id"]
        assert (
            abs(ours["pixels"] - theirs["pixels"])
            <= 0.001 * actual["width"] * actual["height"] * 24
        )


def test_an_onnx_export_is_served_directly_and_named_after_its_folder(cache_dir) -> None:
    settings = LoadOptions(backend="onnxruntime", cache_dir=cache_dir)
    prepare_served(IMAGE_MODEL, "onnxruntime", settings)  # what `ccnet serve` does first
    exported = load_backend(None, IMAGE_MODEL, settings)  # .pt → the prepared export
    onnx_path = Path(exported.info.source)
    assert onnx_path.suffix == ".onnx"
    direct = load_backend("street", onnx_path, settings)
    assert direct.info.name == "street" and direct.info.kind == "image"
    assert load_backend(None, onnx_path, settings).info.name == "ccnet-tiny"


def test_tensorrt_falls_back_to_onnxruntime_without_tensorrt(cache_dir, caplog) -> None:
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: the fallback is not exercised")
    except ImportError:
        pass
    settings = LoadOptions(backend="tensorrt", cache_dir=cache_dir)
    prepare_served(IMAGE_MODEL, "tensorrt", settings)  # prepares the ONNX to fall back on
    with caplog.at_level(logging.WARNING, logger="ccnet.inference"):
        backend = load_backend(None, IMAGE_MODEL, settings)
    assert backend.name == "onnxruntime"
    assert any("falling back to onnxruntime" in r.getMessage() for r in caplog.records)


def test_wrong_pairings_are_refused_with_the_file_named(tmp_path, cache_dir) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 16)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x00" * 16)
    torch_settings = LoadOptions(backend="torch")
    with pytest.raises(BackendError, match=r"model\.onnx.*torch backend serves checkpoints"):
        load_backend(None, onnx_file, torch_settings)
    ort = LoadOptions(backend="onnxruntime", cache_dir=cache_dir)
    with pytest.raises(BackendError, match=r"model\.engine.*tensorrt backend only"):
        load_backend(None, engine, ort)
    with pytest.raises(BackendError, match="no such model file"):
        load_backend(None, tmp_path / "missing.pt", torch_settings)
    with pytest.raises(BackendError, match=r"model\.onnx"):  # no sidecar beside it
        load_backend(None, onnx_file, ort)


def test_duplicate_names_fail_the_load(tmp_path) -> None:
    with make_client(models=[str(IMAGE_MODEL), str(IMAGE_MODEL)]) as clashing:
        body = clashing.get("/readyz").json()
        assert "two models are named 'ccnet-tiny'" in body["error"]["message"]
    with make_client(models=[f"a={IMAGE_MODEL}", f"b={IMAGE_MODEL}", str(VIDEO_MODEL)]) as named:
        names = [m["name"] for m in named.get("/v1/models").json()["models"]]
        assert names == ["a", "b", "ccnet3d-tiny"]
        ok = named.post(
            "/v1/segment?model=b",
            content=png_bytes(np.zeros((8, 8, 3), np.uint8)),
            headers={"content-type": "image/png"},
        )
        assert ok.status_code == 200 and ok.headers["x-model"] == "b"
