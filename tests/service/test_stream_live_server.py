"""WS /v1/stream against a real ``ccnet serve``: the README's Python client, and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench._serve import serve_process

from .live import ROOT, serve

pytestmark = pytest.mark.slow
websockets = pytest.importorskip("websockets")


def _readme_client() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- live-client -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no live-client block"
    return match.group(1)


def _clip(path: Path, frames: int = 8) -> Path:
    from ccnet.inference.synth_scenes import render_clip, sample_rng
    from ccnet.inference.video import encode_overlay_video

    images, _, _ = render_clip(sample_rng(1, "clips", "val", 0), size=96, frames=frames)
    path.write_bytes(encode_overlay_video(np.stack(images), 10.0, "mp4"))
    return path


def test_the_readme_python_client_runs(tmp_path: Path) -> None:
    client = tmp_path / "client.py"
    client.write_text(_readme_client(), encoding="utf-8")
    clip = _clip(tmp_path / "clip.mp4")
    with serve(
        tmp_path / "serve.log", {"CCNET_LOG_FORMAT": "text"}, drop=("CCNET_API_KEY",)
    ) as url:
        done = subprocess.run(
            [sys.executable, str(client), url.replace("http", "ws", 1), str(clip)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ready: ccnet3d-tiny window 4", lines[:3]
    answered = [int(m.group(1)) for line in lines if (m := re.match(r"frame (\d+): ", line))]
    end = json.loads(lines[-1].replace("'", '"'))
    assert end["type"] == "end" and end["received"] == 8
    assert end["processed"] == len(answered) and end["processed"] + end["skipped"] == 8
    assert all("(96, 96)" in line for line in lines if line.startswith("frame "))


def test_sigterm_says_going_away_with_a_reason(tmp_path: Path) -> None:
    """A session open when the server gets SIGTERM is told so (1001 and a reason), and the
    server still exits."""
    log = tmp_path / "serve.log"
    env = {"CCNET_LOG_FORMAT": "text"}
    with serve_process(log, env, drop=("CCNET_API_KEY",)) as (base, process):
        port = int(base.rsplit(":", 1)[1])

        async def session() -> tuple[dict, int, str]:
            url = f"ws://127.0.0.1:{port}/v1/stream?model=ccnet3d-tiny"
            async with websockets.connect(url) as ws:
                assert json.loads(await ws.recv())["type"] == "ready"
                process.send_signal(signal.SIGTERM)
                error = json.loads(await asyncio.wait_for(ws.recv(), 10))
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                return error, ws.close_code, ws.close_reason

        error, code, reason = asyncio.run(session())
        assert (error["type"], error["code"], code) == ("error", "going_away", 1001), error
        assert "shutting down" in reason
        # uvicorn re-raises the signal it caught once it has shut down: killed by SIGTERM
        assert process.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()
