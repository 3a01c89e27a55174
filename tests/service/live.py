"""A real ``ccnet serve`` process for the end-to-end tests: started on a free port of
127.0.0.1, waited for until ``/readyz`` answers 200, stopped with SIGINT (killed if it
lingers)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

__all__ = ["free_port", "serve"]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve(
    log: Path,
    env: dict[str, str],
    *,
    ready_s: float = 120,
    stop_s: float = 30,
    drop: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run ``ccnet serve`` with ``os.environ`` updated by ``env`` (less the ``drop`` names),
    its output in ``log``; yields the base URL once the server is ready."""
    environment = {**os.environ, **env}
    for name in drop:
        environment.pop(name, None)
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "ccnet", "serve", "--port", str(port)],
            cwd=ROOT,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"ccnet serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx2.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ccnet serve not ready in {ready_s:g} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
