"""``ccnet predict`` on images and clips with the bundled models, and ``ccnet serve`` errors."""

from __future__ import annotations

import json
import zipfile

import av
import numpy as np
import pytest
from PIL import Image

from ccnet_cli import main


def test_predict_defaults_to_the_trained_demo_model(tmp_path, capsys) -> None:
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(image), "-o", str(tmp_path / "out"), "--output", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scene"]["model"] == "ccnet-tiny"
    body = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert (body["width"], body["height"]) == (30, 20)
    assert all("rle" in entry for entry in body["classes"])  # files get COCO RLE


def test_predict_segments_a_clip(tmp_path, gif_clip, capsys) -> None:
    clip = tmp_path / "clip.gif"
    clip.write_bytes(gif_clip)
    out = tmp_path / "out"
    assert main(["predict", str(clip), "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)["clip"]
    assert summary["model"] == "ccnet3d-tiny" and summary["frames"] == 24
    with zipfile.ZipFile(out / "clip_masks.zip") as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 24
    with av.open(str(out / "clip_overlay.gif")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 24


def test_predict_reports_a_broken_clip_by_name(tmp_path, capsys) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing else")
    assert main(["predict", str(broken), "-o", str(tmp_path / "out")]) == 2
    assert "broken.mp4" in capsys.readouterr().err


def test_predict_refuses_a_video_model_for_images(tmp_path, capsys) -> None:
    from service.core.config import BUNDLED_MODELS

    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    code = main(
        ["predict", str(image), "-o", str(tmp_path), "--checkpoint", str(BUNDLED_MODELS[1])]
    )
    assert code == 2
    assert "--video-checkpoint" in capsys.readouterr().err


def test_serve_names_a_missing_model_file(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("CCNET_MODELS", raising=False)
    missing = tmp_path / "nope.pt"
    assert main(["serve", "--model", str(missing), "--port", "0"]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_serve_rejects_bad_settings(monkeypatch, capsys) -> None:
    monkeypatch.setenv("CCNET_MAX_FRAMES", "-3")
    assert main(["serve"]) == 2
    assert "max_frames" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--workers", "0"], ["--backend", "tensorflow"]])
def test_serve_flag_validation(flag) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *flag])
    assert exit_info.value.code == 2


def test_predict_on_onnxruntime_matches_torch(tmp_path, capsys, monkeypatch) -> None:
    """The same files through the onnxruntime backend (the checkpoint exported once into the
    cache) give the same masks as through torch."""
    import skimage.data

    monkeypatch.setenv("CCNET_CACHE_DIR", str(tmp_path / "cache"))
    image = tmp_path / "coffee.png"
    Image.fromarray(np.asarray(skimage.data.coffee())[::2, ::2].copy()).save(image)
    masks = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        assert (
            main(["predict", str(image), "-o", str(out), "--output", "png", "--backend", backend])
            == 0
        )
        masks[backend] = np.asarray(Image.open(out / "coffee_mask.png"))
    capsys.readouterr()
    assert list((tmp_path / "cache").glob("onnx/*/model.onnx"))
    assert (masks["torch"] == masks["onnxruntime"]).mean() >= 0.9999


def test_predict_clip_json_is_the_service_body(tmp_path, gif_clip, capsys) -> None:
    from service.schemas import ClipSegmentation

    clip = tmp_path / "clip.gif"
    clip.write_bytes(gif_clip)
    assert main(["predict", str(clip), "-o", str(tmp_path / "out"), "--output", "json"]) == 0
    capsys.readouterr()
    body = ClipSegmentation.model_validate_json((tmp_path / "out" / "clip.json").read_text())
    assert body.frame_count == 24 == len(body.frames)
