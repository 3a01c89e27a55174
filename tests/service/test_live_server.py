"""A real ``ccnet serve`` process on a free port, real photographs, real concurrency."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import png_bytes
from tests.service.live import free_port, serve

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        "CCNET_LOG_FORMAT": "json",
        "CCNET_MAX_BATCH_WAIT_MS": "20",
        "CCNET_CLIENT_QUEUE_SIZE": "32",  # one client sends 32 at once below
        "CCNET_HEADER_TIMEOUT_S": "1",
    }
    with serve(log, env, drop=("CCNET_API_KEY",)) as base:
        yield base, log


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_real_photographs(server, name) -> None:
    import skimage.data

    base, _ = server
    photo = np.asarray(getattr(skimage.data, name)())
    response = httpx2.post(
        f"{base}/v1/segment",
        params={"output": "json"},
        files={"image": (f"{name}.png", png_bytes(photo), "image/png")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["height"], body["width"]) == photo.shape[:2]
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0)
    assert response.headers["x-model"] == "ccnet-tiny"


def test_animated_gif_as_a_clip(server, gif_clip) -> None:
    base, _ = server
    response = httpx2.post(
        f"{base}/v1/segment/video",
        files={"video": ("clip.gif", gif_clip, "image/gif")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 24


def test_32_parallel_requests_all_succeed_and_are_batched(server, astronaut) -> None:
    base, _ = server
    data = png_bytes(np.asarray(Image.fromarray(astronaut).resize((128, 128))))

    def post(_: int) -> httpx2.Response:
        with httpx2.Client(timeout=60) as client:
            return client.post(f"{base}/v1/segment", files={"image": ("a.png", data)})

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(post, range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    metrics = httpx2.get(f"{base}/metrics").text
    count = total = 0.0
    for line in metrics.splitlines():
        if line.startswith('ccnet_batch_size_count{model="ccnet-tiny"}'):
            count = float(line.split()[-1])
        if line.startswith('ccnet_batch_size_sum{model="ccnet-tiny"}'):
            total = float(line.split()[-1])
    assert total >= 32 and count < total, f"{total} images in {count} batches: never batched"


def test_logs_are_json_lines_with_request_ids(server) -> None:
    base, log = server
    httpx2.get(f"{base}/v1/models", headers={"x-request-id": "live-check-1"})
    time.sleep(0.2)
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(e.get("request_id") == "live-check-1" and e.get("status") == 200 for e in entries)
    assert any("ready" in e["message"] for e in entries)


def test_a_model_that_fails_to_load_stops_the_server(tmp_path) -> None:
    """Docker restarts a container whose process exits; an unready one would hang forever."""
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    env = {**os.environ, "CCNET_LOG_FORMAT": "text"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ccnet",
            "serve",
            "--port",
            str(free_port()),
            "--model",
            str(broken),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    # refused by the parent's prepare step (one line naming the file), or by a worker's load
    assert "broken.pt" in done.stderr
    assert "ccnet serve: error:" in done.stderr or "loading the models failed" in done.stderr


def test_serve_runs_the_guarded_http_protocol(server) -> None:
    """`ccnet serve` passes its connection limits to uvicorn: a silent connection is answered
    408 after CCNET_HEADER_TIMEOUT_S, malformed HTTP gets the JSON error body."""
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        began = time.monotonic()
        answer = silent.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - began < 5
    with socket.create_connection(("127.0.0.1", port), timeout=10) as broken:
        broken.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n")
        answer = broken.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b'"code":"bad_request"' in answer, answer
