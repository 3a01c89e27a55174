"""The Python API (``from ccnet import Segmenter``): inputs, results, the service's masks."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from ccnet import ClipSegmenter, Segmenter
from ccnet.inference.demo import BUNDLED_MODELS
from tests.readme import readme_block
from tests.service.conftest import make_client, png_bytes

README = Path(__file__).resolve().parents[2] / "README.md"
PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    # fp32 everywhere: CCNET_PRECISION=auto picks a path per process by measured speed
    return Segmenter.from_file(BUNDLED_MODELS[0], precision="fp32")


@pytest.fixture(scope="module")
def photographs() -> dict[str, np.ndarray]:
    return {name: np.asarray(getattr(skimage.data, name)())[..., :3].copy() for name in PHOTOS}


def test_path_pil_and_array_give_one_mask(segmenter, tmp_path, photographs) -> None:
    rgb = photographs["coffee"]
    path = tmp_path / "coffee.png"
    Image.fromarray(rgb).save(path)
    from_array = segmenter(rgb).mask
    assert from_array.shape == rgb.shape[:2] and from_array.dtype == np.uint8
    np.testing.assert_array_equal(segmenter(path).mask, from_array)
    np.testing.assert_array_equal(segmenter(str(path)).mask, from_array)
    np.testing.assert_array_equal(segmenter(Image.open(path)).mask, from_array)


def test_masks_equal_the_services_on_photographs(segmenter, photographs) -> None:
    """The same bytes through POST /v1/segment and through the Python API: the same mask."""
    with make_client(precision="fp32") as client:
        for name, rgb in photographs.items():
            response = client.post(
                "/v1/segment", files={"image": (f"{name}.png", png_bytes(rgb), "image/png")}
            )
            assert response.status_code == 200, f"{name}: {response.text}"
            served = np.asarray(Image.open(io.BytesIO(response.content)))
            np.testing.assert_array_equal(segmenter(rgb).mask, served, err_msg=name)


def test_probabilities_and_overlay_on_request(segmenter, photographs) -> None:
    rgb = photographs["astronaut"][::3, ::2]  # 171×256: not a multiple of the stride
    plain = segmenter(rgb)
    assert plain.probabilities is None and plain.overlay is None
    full = segmenter(rgb, probabilities=True, overlay=True, alpha=0.4)
    classes = len(segmenter.classes)
    assert full.probabilities.shape == (classes, *rgb.shape[:2])
    np.testing.assert_allclose(full.probabilities.sum(axis=0), 1.0, atol=1e-4)
    # bilinear probabilities and nearest labels agree away from class boundaries
    assert (full.probabilities.argmax(axis=0) == full.mask).mean() > 0.98
    assert full.overlay.shape == rgb.shape and full.overlay.dtype == np.uint8
    np.testing.assert_array_equal(full.mask, plain.mask)
    assert sum(full.class_fractions().values()) == pytest.approx(1.0)


def test_input_conventions_are_enforced(segmenter) -> None:
    with pytest.raises(ValueError, match=r"uint8 RGB values 0\.\.255"):
        segmenter(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        segmenter(np.zeros((8, 8, 5), dtype=np.uint8))
    gray = np.full((9, 11), 128, dtype=np.uint8)
    np.testing.assert_array_equal(segmenter(gray).mask, segmenter(np.dstack([gray] * 3)).mask)
    with pytest.raises(ValueError, match=r"nope\.jpg"):
        segmenter("nope.jpg")


def test_a_clip_model_is_refused_with_the_right_class() -> None:
    with pytest.raises(ValueError, match="ClipSegmenter"):
        Segmenter.from_file(BUNDLED_MODELS[1])
    with pytest.raises(ValueError, match="use Segmenter"):
        ClipSegmenter.from_file(BUNDLED_MODELS[0])


def test_clip_segmenter_matches_the_video_route(gif_clip, tmp_path) -> None:
    clip = tmp_path / "clip.gif"
    clip.write_bytes(gif_clip)
    segmenter = ClipSegmenter.from_file(BUNDLED_MODELS[1], precision="fp32")
    result = segmenter(clip, overlay=True)
    assert result.masks.shape == (24, 25, 14) and result.overlay.shape == (24, 25, 14, 3)
    with make_client(precision="fp32") as client:
        response = client.post("/v1/segment/video", files={"video": ("c.gif", gif_clip)})
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        served = np.stack(
            [
                np.asarray(Image.open(io.BytesIO(archive.read(name))))
                for name in sorted(archive.namelist())
                if name.endswith(".png")
            ]
        )
    np.testing.assert_array_equal(result.masks, served)


def test_readme_python_snippet_runs(tmp_path, monkeypatch, photographs) -> None:
    """The README's two-line example, run as written in a folder holding only photo.jpg: the
    bundled demo name resolves, no model file needed."""
    Image.fromarray(photographs["astronaut"]).save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CCNET_PRECISION", "fp32")
    snippet = readme_block("python-api")
    assert len([line for line in snippet.splitlines() if line and not line.startswith("#")]) <= 4
    namespace: dict[str, object] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.mask.shape == (512, 512)  # type: ignore[attr-defined]
    expected = Segmenter.from_file(BUNDLED_MODELS[0], precision="fp32")(tmp_path / "photo.jpg")
    np.testing.assert_array_equal(result.mask, expected.mask)  # type: ignore[attr-defined]
    assert json.dumps(result.class_fractions())  # type: ignore[attr-defined]


@pytest.mark.parametrize("missing", ["model.pt", "ccnet-tinyy", "runs/x/best.onnx"])
def test_missing_model_file_is_file_not_found(tmp_path, monkeypatch, missing) -> None:
    """A name that is neither a file nor a bundled demo: FileNotFoundError naming it (and the
    bundled names), never a ValueError about its format."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as missing_error:
        Segmenter.from_file(missing)
    assert missing in str(missing_error.value) and "ccnet-tiny" in str(missing_error.value)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    from ccnet.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    return export_onnx(BUNDLED_MODELS[0], out, progress=None).model_path


def test_backend_follows_the_file(onnx_file, segmenter, photographs, tmp_path, monkeypatch, capsys):
    """``.onnx`` runs on onnxruntime with no backend named, in the API and in ccnet predict."""
    from ccnet.cli import main

    monkeypatch.setenv("CCNET_PRECISION", "fp32")
    monkeypatch.delenv("CCNET_BACKEND", raising=False)
    onnx = Segmenter.from_file(onnx_file)
    assert onnx.backend.name == "onnxruntime"
    rgb = photographs["chelsea"]
    assert (onnx(rgb).mask == segmenter(rgb).mask).mean() >= 0.9999
    image = tmp_path / "chelsea.png"
    Image.fromarray(rgb).save(image)
    argv = ["predict", str(image), "--checkpoint", str(onnx_file), "-o", str(tmp_path / "out")]
    assert main([*argv, "--output", "png", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[str(image)]["files"] == [str(tmp_path / "out" / "chelsea_mask.png")]


def test_serve_takes_an_onnx_model(onnx_file, monkeypatch, capsys) -> None:
    """`ccnet serve --model model.onnx` once failed on the torch default backend (exit 143)."""
    import uvicorn

    from ccnet.cli import main

    started: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: started.append(kwargs))
    for name in ("CCNET_BACKEND", "CCNET_MODELS", "CCNET_PORT"):
        # `ccnet serve` exports its flags to the environment for the workers: set first, so
        # monkeypatch restores the variables afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    assert main(["serve", "--model", str(onnx_file), "--port", "0"]) == 0
    assert len(started) == 1
    capsys.readouterr()
    # the preflight really loads it: forced onto torch, it fails before uvicorn starts
    assert main(["serve", "--model", str(onnx_file), "--port", "0", "--backend", "torch"]) == 2
    assert len(started) == 1
    assert "model.onnx" in capsys.readouterr().err


def test_clip_segmenter_stops_where_before_window_raises() -> None:
    """The hook the service passes its deadline through: called once per window, and what
    it raises stops the clip there (no further forward pass)."""
    segmenter = ClipSegmenter.from_file("ccnet3d-tiny", precision="fp32")
    frames = np.random.default_rng(0).integers(0, 256, (10, 32, 40, 3), dtype=np.uint8)
    calls: list[int] = []
    segmenter.segment(frames, before_window=lambda: calls.append(1))
    windows = len(calls)
    assert windows >= 3, "10 frames in windows of 4 overlapping by 2"

    class StopError(Exception):
        pass

    def stop_at_second() -> None:
        calls.append(1)
        if len(calls) > windows + 1:
            raise StopError

    with pytest.raises(StopError):
        segmenter.segment(frames, before_window=stop_at_second)
    assert len(calls) == windows + 2


def test_bundled_names_resolve_and_missing_files_say_so(tmp_path) -> None:
    assert Segmenter.from_file("ccnet-tiny", precision="fp32").info.name == "ccnet-tiny"
    with pytest.raises(FileNotFoundError, match=r"no such model file.*ccnet-tiny"):
        Segmenter.from_file(tmp_path / "model.pt")
