"""The README as printed: its quick-start API calls against a live ``ccnet serve``, the
quick retrain recipe (at CI size) and the hot-reload cycle with the model it trained. A
README that drifts from the code fails here."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.readme import run_shell_block
from tests.service.live import free_port, serve

pytestmark = pytest.mark.slow


def _clip_frames() -> np.ndarray:
    """Eight 64×48 frames of a square moving over a striped background."""
    frames = np.zeros((8, 48, 64, 3), dtype=np.uint8)
    frames[..., 0] = (np.arange(64)[None, :] // 4 % 2 * 200).astype(np.uint8)
    for t in range(8):
        frames[t, 10:30, 4 + 4 * t : 24 + 4 * t] = (30, 220, 60)
    return frames


def test_quick_start_api_calls_run_as_printed(tmp_path: Path, astronaut, gif_clip) -> None:
    from ccnet.inference.video import encode_overlay_video

    Image.fromarray(astronaut).save(tmp_path / "photo.jpg", quality=92)
    (tmp_path / "clip.mp4").write_bytes(encode_overlay_video(_clip_frames(), 8.0, "mp4"))
    (tmp_path / "clip.gif").write_bytes(gif_clip)
    env = {"CCNET_PRECISION": "fp32", "CCNET_CACHE_DIR": str(tmp_path / "cache")}
    with serve(tmp_path / "server.log", env, drop=("CCNET_MODEL_DIR", "CCNET_MODELS")) as base:
        port = int(base.rsplit(":", 1)[1])
        done = run_shell_block("quick-start-api", tmp_path, port=port, timeout_s=240)
    mask = Image.open(tmp_path / "mask.png")
    assert mask.mode == "P" and mask.size == (512, 512)
    overlay = Image.open(tmp_path / "overlay.png")
    assert overlay.mode == "RGB" and overlay.size == (512, 512)
    statistics = json.loads(done.stdout)
    assert statistics["model"] == "ccnet-tiny" and statistics["classes"], statistics.keys()
    with zipfile.ZipFile(tmp_path / "masks.zip") as masks:
        assert sum(name.endswith(".png") for name in masks.namelist()) == 8
    gif = Image.open(io.BytesIO((tmp_path / "out.gif").read_bytes()))
    assert gif.format == "GIF" and gif.n_frames > 1


def test_retrain_recipe_then_hot_reload_cycle_run_as_printed(tmp_path: Path, astronaut) -> None:
    if shutil.which("jq") is None or shutil.which("curl") is None:
        pytest.skip("the README's hot-reload cycle uses curl and jq")
    run_shell_block("retrain", tmp_path, port=free_port(), timeout_s=400)
    run = tmp_path / "runs" / "mine"
    assert (run / "best.pt").is_file() and (run / "model.onnx").is_file()
    assert (run / "model.json").is_file() and (run / "report" / "report.json").is_file()

    Image.fromarray(astronaut).save(tmp_path / "photo.jpg", quality=92)
    port = free_port()
    env = {
        "CCNET_PORT": str(port),
        "CCNET_API_KEY": "readme-key",
        "KEY": "readme-key",
        "CCNET_PRECISION": "fp32",
        "CCNET_CACHE_DIR": str(tmp_path / "cache"),
        "CCNET_LOG_FORMAT": "text",
    }
    done = run_shell_block("hot-reload", tmp_path, port=port, env=env, timeout_s=300)
    lines = done.stdout.splitlines()
    assert '["mine","mine.pt"]' in lines, done.stdout  # named by its file, nothing else served
    assert not any(line.startswith('["ccnet') for line in lines), done.stdout
    mask = Image.open(tmp_path / "mine.png")
    assert mask.mode == "P" and mask.size == (512, 512)


def test_ccnet3d_recipe_runs_as_printed(tmp_path: Path) -> None:
    """The temporal-gain recipe (2D then 3D per seed, then both benches) at CI size."""
    done = run_shell_block("ccnet3d-recipe", tmp_path, port=free_port(), timeout_s=600)
    for seed in (0, 1, 2):
        assert (tmp_path / "runs" / f"2d-s{seed}" / "best.pt").is_file()
        assert (tmp_path / "runs" / f"3d-s{seed}" / "best.pt").is_file()
    assert "mean ± s.d. (3 seeds)" in done.stdout, done.stdout[-3000:]
    assert "time is worth" in done.stdout, done.stdout[-3000:]
