"""``ccnet predict`` on images and clips with the bundled models, and ``ccnet serve`` errors."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from ccnet.cli import main


def test_predict_defaults_to_the_trained_demo_model(tmp_path, capsys) -> None:
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(image), "-o", str(tmp_path / "out"), "--output", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[str(image)]["model"] == "ccnet-tiny"
    body = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert (body["width"], body["height"]) == (30, 20)
    assert all("rle" in entry for entry in body["classes"])  # files get COCO RLE


def test_predict_segments_a_clip(tmp_path, gif_clip, capsys) -> None:
    clip = tmp_path / "clip.gif"
    clip.write_bytes(gif_clip)
    out = tmp_path / "out"
    assert main(["predict", str(clip), "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)[str(clip)]
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
    from ccnet.service.core.config import BUNDLED_MODELS

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
    assert "CCNET_MAX_FRAMES=-3" in capsys.readouterr().err


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
    monkeypatch.setenv("CCNET_PRECISION", "fp32")  # the same arithmetic, not int8 vs fp32
    image = tmp_path / "coffee.png"
    Image.fromarray(np.asarray(skimage.data.coffee())[::2, ::2].copy()).save(image)
    masks = {}
    flags = ["--precision", "fp32", "--backend"]
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        assert (
            main([*["predict", str(image), "-o", str(out), "--output", "png"], *flags, backend])
            == 0
        )
        masks[backend] = np.asarray(Image.open(out / "coffee_mask.png"))
    capsys.readouterr()
    assert list((tmp_path / "cache").glob("onnx/*/model.onnx"))
    assert (masks["torch"] == masks["onnxruntime"]).mean() >= 0.9999


def test_predict_clip_json_is_the_service_body(tmp_path, gif_clip, capsys) -> None:
    from ccnet.service.schemas import ClipSegmentation

    clip = tmp_path / "clip.gif"
    clip.write_bytes(gif_clip)
    assert main(["predict", str(clip), "-o", str(tmp_path / "out"), "--output", "json"]) == 0
    capsys.readouterr()
    body = ClipSegmentation.model_validate_json((tmp_path / "out" / "clip.json").read_text())
    assert body.frame_count == 24 == len(body.frames)


def _image(path, size=(12, 16), value=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def test_predict_walks_folders_and_mirrors_their_paths(tmp_path, gif_clip, capsys, monkeypatch):
    """A folder is searched recursively for images and clips; results keep each input's
    relative path, hidden files and the output folder itself are left alone."""
    monkeypatch.chdir(tmp_path)
    _image(Path("imgs/a.png"))
    _image(Path("imgs/sub/deeper/b.jpg"))
    (Path("imgs/sub") / "clip.gif").write_bytes(gif_clip)
    _image(Path("imgs/.hidden/c.png"))
    Path("imgs/notes.txt").write_text("not an image")
    code = main(["predict", "imgs", "-o", "imgs/out", "--output", "png", "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert sorted(summary) == ["imgs/a.png", "imgs/sub/clip.gif", "imgs/sub/deeper/b.jpg"]
    written = sorted(str(p.relative_to("imgs/out")) for p in Path("imgs/out").rglob("*.*"))
    assert written == [
        "imgs/a_mask.png",
        "imgs/sub/clip_masks.zip",
        "imgs/sub/deeper/b_mask.png",
    ]
    assert summary["imgs/sub/clip.gif"]["frames"] == 24
    assert captured.err == ""  # --no-progress: nothing on stderr
    # run again: the earlier results inside imgs/out are not taken for inputs
    assert main(["predict", "imgs", "-o", "imgs/out", "--output", "png", "--no-progress"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_two_inputs_give_two_results(tmp_path, capsys, monkeypatch) -> None:
    """photo.jpg and photo.png once wrote one mask over the other; same names in two folders
    also stay apart."""
    monkeypatch.chdir(tmp_path)
    _image(Path("a/photo.jpg"), value=10)
    _image(Path("a/photo.png"), size=(20, 30), value=200)
    _image(Path("b/photo.png"), size=(8, 8))
    argv = ["predict", "a/photo.jpg", "a/photo.png", "b/photo.png", "-o", "out"]
    assert main([*argv, "--output", "png", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    files = {key: entry["files"] for key, entry in summary.items()}
    assert files == {
        "a/photo.jpg": ["out/a/photo_jpg_mask.png"],
        "a/photo.png": ["out/a/photo_png_mask.png"],
        "b/photo.png": ["out/b/photo_mask.png"],
    }
    assert Image.open("out/a/photo_png_mask.png").size == (30, 20)
    assert Image.open("out/a/photo_jpg_mask.png").size == (16, 12)


def test_absolute_inputs_with_one_name_do_not_collide(tmp_path, capsys) -> None:
    first, second = tmp_path / "x" / "scene.png", tmp_path / "y" / "scene.png"
    _image(first)
    _image(second, size=(9, 9))
    out = tmp_path / "out"
    argv = ["predict", str(first), str(second), "-o", str(out), "--output", "png"]
    assert main([*argv, "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[str(first)]["files"] == [str(out / "scene_mask.png")]
    assert summary[str(second)]["files"] == [str(out / "scene_2_mask.png")]


def test_an_empty_folder_is_a_clear_error(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "empty: no image or clip files" in err and "Traceback" not in err


def test_overlay_legend_flag(tmp_path, capsys) -> None:
    import skimage.data

    image = tmp_path / "coffee.png"
    Image.fromarray(np.asarray(skimage.data.coffee())).save(image)
    for flags, out in (([], "plain"), (["--legend"], "legend")):
        argv = ["predict", str(image), "-o", str(tmp_path / out), "--output", "overlay"]
        assert main([*argv, "--no-progress", *flags]) == 0
    capsys.readouterr()
    plain = np.asarray(Image.open(tmp_path / "plain" / "coffee_overlay.png"))
    legend = np.asarray(Image.open(tmp_path / "legend" / "coffee_overlay.png"))
    differs = (plain != legend).any(axis=2)
    assert differs[:40, :40].any() and not differs[-100:, -100:].any()


def _serve(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccnet", "serve", *argv],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "CCNET_LOG_FORMAT": "text"},
    )


def test_serve_exits_2_when_a_model_cannot_load(tmp_path) -> None:
    """A corrupt model once started the server, logged, then died with 143 from SIGTERM."""
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    done = _serve("--model", str(bad), "--port", "0")
    assert done.returncode == 2, done.stderr
    assert "broken.pt" in done.stderr and "Traceback" not in done.stderr
    assert not re.search(r"\bready\b", done.stderr)


def test_serve_exits_2_on_a_port_in_use() -> None:
    """A taken port once failed with status 3 after the workers had logged "ready"."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve("--port", str(port), "--host", "127.0.0.1")
    assert done.returncode == 2, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "in use" in done.stderr
    assert not re.search(r"\bready\b", done.stderr) and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
