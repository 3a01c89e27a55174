"""The serve prepare step: a real `ccnet serve --workers 2` exports a checkpoint exactly once,
in the parent process, before the workers start; the workers only load it.

Every process of the server records its calls of the exporter and of the model loader in a
file (a ``sitecustomize`` on ``PYTHONPATH`` wraps both; nothing else changes), so the test
sees which process did what.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ccnet.service.core.config import BUNDLED_MODELS

ROOT = Path(__file__).resolve().parents[2]
_SPY = """
import os

def _record(kind):
    with open(os.environ["CCNET_TEST_CALLS"], "a") as calls:
        calls.write(f"{kind} {os.getpid()}\\n")

if os.environ.get("CCNET_TEST_CALLS"):
    import ccnet.export.onnx
    import ccnet.inference.backends
    import ccnet.inference.backends.loading

    _export, _load = ccnet.export.onnx.export_onnx, ccnet.inference.backends.loading.load_backend

    def export_onnx(*args, **kwargs):
        _record("export")
        return _export(*args, **kwargs)

    def load_backend(*args, **kwargs):
        _record("load")
        backend = _load(*args, **kwargs)
        _record("loaded")
        return backend

    ccnet.export.onnx.export_onnx = export_onnx
    loading = ccnet.inference.backends.loading
    ccnet.inference.backends.load_backend = loading.load_backend = load_backend
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _calls(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        return []
    pairs = (line.split() for line in path.read_text().splitlines() if line)
    return [(kind, int(pid)) for kind, pid in pairs]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.slow
def test_serve_with_two_workers_exports_a_checkpoint_once(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    (spy_dir / "sitecustomize.py").write_text(_SPY)
    calls = tmp_path / "calls.txt"
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CCNET_")},
        "PYTHONPATH": os.pathsep.join([str(spy_dir), str(ROOT)]),
        "CCNET_TEST_CALLS": str(calls),
        "PYTHONFAULTHANDLER": "1",  # a worker stopped with SIGABRT prints its threads' stacks
    }
    command = [
        sys.executable, "-m", "ccnet", "serve", "--model", str(BUNDLED_MODELS[0]),
        "--backend", "onnxruntime", "--workers", "2", "--host", "127.0.0.1",
        "--port", str(port), "--cache-dir", str(tmp_path / "cache"), "--log-format", "text",
    ]  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        loaders: set[int] = set()
        loaded: set[int] = set()
        done = False
        while not done and time.monotonic() < deadline and server.poll() is None:
            # the parent may load too (to fail early on a bad file); the workers must. Done
            # is both workers *finished* loading: a worker that only began answers /readyz
            # 503 to whichever probe the kernel hands it
            calls_now = _calls(calls)
            loaders = {pid for kind, pid in calls_now if kind == "load"} - {server.pid}
            loaded = {pid for kind, pid in calls_now if kind == "loaded"} - {server.pid}
            done = len(loaded) >= 2 and _ready(port)
            if not done:
                time.sleep(1)
        output = (tmp_path / "serve.log").read_text()
        assert server.poll() is None, f"ccnet serve exited {server.returncode}:\n{output}"
        if not done:
            # a worker stuck loading for minutes: its stacks, then fail
            for pid in loaders - loaded:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGABRT)
            time.sleep(3)
            output = (tmp_path / "serve.log").read_text()
            pytest.fail(f"two workers did not load in time ({loaders} began):\n{output}")
        assert len(loaded) == 2, f"workers that loaded: {loaded}; parent {server.pid}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own session: it and its workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
    exports = [pid for kind, pid in _calls(calls) if kind == "export"]
    assert exports == [server.pid], f"exports by {exports}; parent {server.pid}, workers {loaders}"
    assert len(list((tmp_path / "cache").glob("onnx/*/model.onnx"))) == 1
