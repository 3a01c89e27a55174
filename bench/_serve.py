"""A real ``ccnet serve`` process on a free port of 127.0.0.1, for the benches and the
end-to-end tests alike: started, waited for until ``/readyz`` answers 200, stopped with SIGINT
(killed if it lingers). The one copy of that dance; ``tests/service/live.py`` turns its
errors into test failures."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx2

__all__ = ["ROOT", "ServerError", "free_port", "serve_process", "stop_process_group"]

ROOT = Path(__file__).resolve().parents[1]


class ServerError(RuntimeError):
    """The server exited, or was not ready in time (the message carries its log's tail)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_process(
    log: Path,
    env: dict[str, str],
    *,
    ready_s: float = 120,
    stop_s: float = 30,
    drop: Sequence[str] = (),
    args: Sequence[str] = (),
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``ccnet serve [args]`` with ``os.environ`` updated by ``env`` (less the ``drop``
    names), its output in ``log``; yields (base URL, process) once the server is ready.

    Raises:
        ServerError: it exited, or ``/readyz`` did not answer 200 within ``ready_s``.
    """
    environment = {**os.environ, **env}
    for name in drop:
        environment.pop(name, None)
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "ccnet", "serve", "--port", str(port), *args],
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
                raise ServerError(f"ccnet serve exited with {process.returncode}:\n{_tail(log)}")
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise ServerError(f"ccnet serve not ready in {ready_s:g} s:\n{_tail(log)}")
            time.sleep(0.2)
        yield base, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 20) -> None:
    """Stop a process started in a session of its own and everything in its group (a Ray head
    with its GCS, raylet and workers): SIGTERM, then SIGKILL if it has not gone in ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
