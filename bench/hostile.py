"""Hostile traffic against a real ``ccnet serve`` on 127.0.0.1: does the service hold?

Replays the attacks of issue 13 against a fresh server with the default settings, one at a
time, while a prober polls ``/healthz`` every 20 ms on its own connection:

1. ``parts``: a 20.9 MB multipart body of 2.3 M empty parts;
2. ``overlay``: three 6320×6320 flat PNGs (131 KB each) at once with ``?output=overlay``;
3. ``clips``: eight 100-frame 1000×1000 clips at once;
5. ``slow``: connections sending headers at 1 B/s, bodies at 5 B/s, and connections that send
   nothing, then more idle connections than ``CCNET_MAX_CONNECTIONS``.

For each it prints the answers, the time to each refusal, the server's peak RSS above idle
(VmHWM after a reset through /proc/PID/clear_refs) and the /healthz latency percentiles.
Bounded: every attack has a time limit, and the server is stopped at the end.

    python -m bench.hostile [--only parts,overlay,clips,slow] [--set CCNET_X=V ...]

The attacks of issue 21 (``--only v2-json,v2-bytes,v2-logits,squat,v2-batch,fair``):

* ``v2-json`` (#1): a 150 MB /v2 JSON body declaring a ``[1,1,1,3]`` tensor;
* ``v2-bytes`` (#2): eight flat 40 MP PNGs as /v2 ``image_bytes`` (JSON, base64);
* ``v2-logits`` (#3): one 2000×2000 image with ``logits`` asked for as JSON, then as binary;
* ``squat`` (#4): one upload sends 99 MiB at once and trickles above ``MIN_BODY_RATE`` while
  a victim posts a small image every 0.25 s; the squatter's answer and when it came;
* ``v2-batch`` (#5): eight 1024×1024 images in one /v2 request (binary UINT8);
* ``fair`` (#6): eight clients (127.0.0.2-9) loop tiny clips while a victim (127.0.0.10)
  posts one a second for 30 s; the victim's success rate.

``overlay1``, ``clip1`` and ``clip1-overlay`` (one request each, run with a large
``CCNET_MEMORY_BUDGET_MB``) measure what a single request really costs, the figures the
factors of ``service/costs.py`` are checked against.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import numpy as np
from PIL import Image

from bench._serve import serve_process

MiB = 1 << 20


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
        raise KeyError(key)

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def rss_mib(self) -> float:
        return self.status_kib("VmRSS") / 1024

    def peak_mib(self) -> float:
        return self.status_kib("VmHWM") / 1024


@contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[Server]:
    """``ccnet serve`` with the default settings and ``env`` (JSON logs, no API key)."""
    with serve_process(log, {"CCNET_LOG_FORMAT": "json", **env}, drop=("CCNET_API_KEY",)) as (
        base,
        process,
    ):
        yield Server(process, int(base.rsplit(":", 1)[1]), log)


@dataclass
class Prober:
    """GET /healthz every ``interval`` s on one keep-alive connection; latencies in ms."""

    base: str
    interval: float = 0.02
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx2.Client(timeout=5) as client:
            while not self._stop.is_set():
                began = time.perf_counter()
                try:
                    ok = client.get(f"{self.base}/healthz").status_code == 200
                except httpx2.TransportError:
                    ok = False
                if ok:
                    self.latencies.append((time.perf_counter() - began) * 1e3)
                else:
                    self.failures += 1
                self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[Prober]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def summary(self) -> str:
        if not self.latencies:
            return f"no answer ({self.failures} failures)"
        ordered = sorted(self.latencies)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

        return (
            f"p50 {statistics.median(ordered):.1f} / p99 {pct(99):.1f} / max {ordered[-1]:.1f} ms"
            f" ({len(ordered)} probes, {self.failures} failed)"
        )


@dataclass
class Outcome:
    name: str
    answers: str
    refusal_ms: str
    peak_above_idle_mib: float
    healthz: str
    notes: str = ""


def _measure(server: Server, name: str, attack: Callable[[], tuple[str, str, str]]) -> Outcome:
    time.sleep(0.5)
    idle = server.rss_mib()
    server.reset_peak()
    with Prober(server.base).running() as prober:
        answers, refusals, notes = attack()
        time.sleep(0.3)
    peak = server.peak_mib() - idle
    return Outcome(name, answers, refusals, peak, prober.summary(), notes)


# ---------------------------------------------------------------------------- attacks


def _raw_request(port: int, head: bytes, body: bytes, timeout: float = 30) -> tuple[int, float]:
    """Send a request over a raw socket; (status, ms until the status line arrived)."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        # refused before the body was read: the answer is waiting
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    elapsed = (time.perf_counter() - began) * 1e3
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, elapsed


def _post_raw(
    server: Server, path: str, content_type: str, body: bytes, tag: str
) -> tuple[int, float, float]:
    """POST ``body`` over a raw socket with a request id of its own: (status, the server's
    own time for it from its log, ms until the client saw the status line)."""
    rid = f"hostile-{tag}-{time.monotonic_ns()}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"X-Request-Id: {rid}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    status, ms = _raw_request(server.port, head, body)
    time.sleep(0.3)  # the access log line is written after the answer
    return status, _server_ms(server.log, {rid}).get(rid, float("nan")), ms


def attack_parts(server: Server) -> tuple[str, str, str]:
    body = b"--x\r\n\r\n\r\n" * 2_300_000 + b"--x--\r\n"  # ~20.9 MB, 2.3 M empty parts
    status, server_ms, ms = _post_raw(
        server, "/v1/segment", "multipart/form-data; boundary=x", body, "parts"
    )
    return (
        f"{status}",
        f"server {server_ms:.0f} ms, client {ms:.0f} ms",
        f"{len(body) / 1e6:.1f} MB body",
    )


def _flat_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _server_ms(log: Path, request_ids: set[str]) -> dict[str, float]:
    """The server's own duration of each request, from its JSON access log."""
    import json

    found = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and any(rid in line for rid in request_ids):
            entry = json.loads(line)
            if entry.get("request_id") in request_ids and "duration_ms" in entry:
                found[entry["request_id"]] = entry["duration_ms"]
    return found


def _concurrent_posts(
    server: Server,
    path: str,
    payloads: list[tuple[str, bytes, str]],
    field_name: str,
    params: dict[str, str],
) -> tuple[str, str]:
    tag = f"hostile-{time.monotonic_ns()}"

    def post(index: int) -> tuple[int, float, str, str]:
        name, data, media = payloads[index]
        rid = f"{tag}-{index}"
        began = time.perf_counter()
        with httpx2.Client(timeout=300) as client:
            response = client.post(
                f"{server.base}{path}",
                params=params,
                files={field_name: (name, data, media)},
                headers={"x-request-id": rid},
            )
        code = response.json()["error"]["code"] if response.status_code >= 400 else ""
        return response.status_code, (time.perf_counter() - began) * 1e3, code, rid

    with ThreadPoolExecutor(len(payloads)) as pool:
        results = list(pool.map(post, range(len(payloads))))
    time.sleep(0.3)  # the access log line follows the answer
    server_ms = _server_ms(server.log, {rid for *_, rid in results})
    answers = ", ".join(f"{s}{' ' + c if c else ''}" for s, _, c, _ in results)
    refused = [
        (ms, server_ms.get(rid, float("nan")))
        for _, ms, code, rid in results
        if code == "overloaded"
    ]
    if not refused:
        return answers, "none refused"
    client_ms = [c for c, _ in refused]
    server_side = [v for _, v in refused]
    return answers, (
        f"server {min(server_side):.0f}-{max(server_side):.0f} ms, client "
        f"{min(client_ms):.0f}-{max(client_ms):.0f} ms ({len(refused)})"
    )


def attack_overlay(server: Server, copies: int = 3) -> tuple[str, str, str]:
    png = _flat_png(6320)
    payloads = [("flat.png", png, "image/png")] * copies
    answers, refusals = _concurrent_posts(
        server, "/v1/segment", payloads, "image", {"output": "overlay"}
    )
    return answers, refusals, f"{copies} × {len(png) / 1e3:.0f} KB PNG, 6320×6320"


def _clip(frames: int, side: int) -> bytes:
    from ccnet.inference.video import encode_overlay_video

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    clip = np.stack([np.roll(base, 4 * t, axis=1) for t in range(frames)])
    return encode_overlay_video(clip, 25.0, "mp4")


def attack_clips(server: Server, copies: int = 8, output: str = "json") -> tuple[str, str, str]:
    data = _clip(100, 1000)
    payloads = [("clip.mp4", data, "video/mp4")] * copies
    answers, refusals = _concurrent_posts(
        server, "/v1/segment/video", payloads, "video", {"output": output}
    )
    return answers, refusals, f"{copies} × {len(data) / 1e6:.1f} MB mp4, 100 × 1000×1000"


def _trickle(port: int, payload: bytes, rate: float, stop: threading.Event) -> float:
    """Send ``payload`` at ``rate`` bytes/s until the server closes; seconds until closed."""
    began = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            for byte in payload:
                if stop.is_set():
                    return float("nan")
                sock.sendall(bytes([byte]))
                if stop.wait(1 / rate):
                    return float("nan")
    except OSError:
        pass
    return time.monotonic() - began


def _idle_connections(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    return sockets


def _closed_within(sockets: list[socket.socket], limit: float) -> tuple[int, float]:
    """How many of ``sockets`` the server closed within ``limit`` s, and when the last did."""
    began = time.monotonic()
    closed, last = 0, 0.0
    pending = list(sockets)
    for sock in pending:
        sock.setblocking(False)
    while pending and time.monotonic() - began < limit:
        still = []
        for sock in pending:
            try:
                data = sock.recv(4096)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed += 1
                    last = time.monotonic() - began
                    sock.close()
                    continue
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
                last = time.monotonic() - began
                sock.close()
                continue
            still.append(sock)
        pending = still
        time.sleep(0.05)
    for sock in pending:
        sock.close()
    return closed, last


def attack_slow(server: Server) -> tuple[str, str, str]:
    stop = threading.Event()
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    body_head = (
        b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    with ThreadPoolExecutor(60) as pool:
        slow_headers = [pool.submit(_trickle, server.port, header, 1.0, stop) for _ in range(30)]

        def slow_body() -> float:
            began = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
                    sock.sendall(body_head)
                    while not stop.is_set():
                        sock.sendall(b"\x00" * 5)
                        if stop.wait(1.0):
                            return float("nan")
            except OSError:
                pass
            return time.monotonic() - began

        slow_bodies = [pool.submit(slow_body) for _ in range(30)]
        idle = _idle_connections(server.port, 900)  # under the cap: the timeouts close them
        idle_closed, idle_last = _closed_within(idle, 30)
        header_times = [f.result(timeout=60) for f in slow_headers]
        body_times = [f.result(timeout=60) for f in slow_bodies]
        stop.set()
    # a flood past the connection cap (1024): new connections evict idle ones, /healthz
    # still answers
    flood = _idle_connections(server.port, 3000)
    began = time.perf_counter()
    with httpx2.Client(timeout=5) as client:
        during_flood = client.get(f"{server.base}/healthz").status_code
    flood_ms = (time.perf_counter() - began) * 1e3
    for sock in flood:
        sock.close()
    answers = (
        f"idle: {idle_closed}/{len(idle)} closed (last at {idle_last:.1f} s); "
        f"slow headers closed after {max(header_times):.1f} s; "
        f"slow bodies closed after {max(body_times):.1f} s; "
        f"/healthz during a {len(flood)}-connection flood: {during_flood} in {flood_ms:.0f} ms"
    )
    return answers, "-", ""


# ---------------------------------------------------------------------------- issue 21

_INFER = "/v2/models/ccnet-tiny/infer"


def _v2_post(server: Server, body: bytes, header_length: int | None = None) -> tuple[int, str, str]:
    """(status, error code, "server X ms, client Y ms") of one /v2 infer request."""
    rid = f"hostile-v2-{time.monotonic_ns()}"
    headers = {"content-type": "application/json", "x-request-id": rid}
    if header_length is not None:
        headers = {"Inference-Header-Content-Length": str(header_length), "x-request-id": rid}
    began = time.perf_counter()
    with httpx2.Client(timeout=300) as client:
        response = client.post(f"{server.base}{_INFER}", content=body, headers=headers)
    ms = (time.perf_counter() - began) * 1e3
    code = response.json().get("code", "") if response.status_code >= 400 else ""
    time.sleep(0.3)  # the access log line follows the answer
    server_ms = _server_ms(server.log, {rid}).get(rid, float("nan"))
    return response.status_code, code, f"server {server_ms:.0f} ms, client {ms:.0f} ms"


def attack_v2_json(server: Server) -> tuple[str, str, str]:
    values = 30_000_000  # 60 MB of "1,"... declared as 3 values
    body = (
        b'{"inputs":[{"name":"image","datatype":"UINT8","shape":[1,1,1,3],"data":['
        + b"1," * (values - 1)
        + b"1]}]}"
    )
    status, server_ms, ms = _post_raw(server, _INFER, "application/json", body, "v2-json")
    return (
        f"{status}",
        f"server {server_ms:.0f} ms, client {ms:.0f} ms",
        f"{len(body) / 1e6:.0f} MB body, 30 M values",
    )


def attack_v2_bytes(server: Server) -> tuple[str, str, str]:
    import base64
    import json

    png = base64.b64encode(_flat_png(6320)).decode()
    body = json.dumps(
        {
            "inputs": [
                {"name": "image_bytes", "datatype": "BYTES", "shape": [8], "data": [png] * 8}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, code, times = _v2_post(server, body)
    return f"{status} {code}", times, f"8 × 6320×6320 PNG, {len(body) / 1e3:.0f} KB"


def _uint8_request(images: np.ndarray, outputs: list[dict]) -> tuple[bytes, int]:
    import json

    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": list(images.shape),
                    "parameters": {"binary_data_size": images.size},
                }
            ],
            "outputs": outputs,
        }
    ).encode()
    return head + images.tobytes(), len(head)


def attack_v2_logits(server: Server) -> tuple[str, str, str]:
    image = np.full((1, 2000, 2000, 3), 120, np.uint8)
    answers = []
    for binary in (False, True):
        body, length = _uint8_request(
            image, [{"name": "logits", "parameters": {"binary_data": binary}}]
        )
        status, code, times = _v2_post(server, body, length)
        answers.append(f"{'binary' if binary else 'JSON'}: {status} {code} ({times})")
    return "; ".join(answers), "-", "one 2000×2000 image, logits"


def attack_v2_batch(server: Server) -> tuple[str, str, str]:
    images = np.random.default_rng(0).integers(0, 256, (8, 1024, 1024, 3), dtype=np.uint8)
    body, length = _uint8_request(images, [{"name": "mask", "parameters": {"binary_data": True}}])
    status, code, times = _v2_post(server, body, length)
    return f"{status} {code}", times, "8 × 1024×1024, binary"


def attack_squat(server: Server) -> tuple[str, str, str]:
    declared, sent = 100 * MiB, 99 * MiB
    answer: dict[str, object] = {}

    def squat() -> None:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=120) as sock:
            sock.sendall(
                b"POST /v1/segment/video HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
                + f"Content-Length: {declared}\r\n\r\n".encode()
            )
            sock.sendall(b"\0" * sent)
            sock.settimeout(0.5)
            data = b""
            while time.monotonic() - began < 90 and not data:
                try:
                    sock.sendall(b"\0" * 1024)  # 2 kB/s: above the default MIN_BODY_RATE
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
        answer["status"] = data[9:12].decode() if data else "closed"
        answer["after"] = time.monotonic() - began

    thread = threading.Thread(target=squat, daemon=True)
    thread.start()
    time.sleep(2)  # the squatter's first 99 MiB are in
    small = _flat_png(64)
    statuses = []
    with httpx2.Client(timeout=30) as client:
        for _ in range(20):
            response = client.post(
                f"{server.base}/v1/segment", files={"image": ("s.png", small, "image/png")}
            )
            statuses.append(response.status_code)
            time.sleep(0.25)
    thread.join(100)
    ok = statuses.count(200)
    return (
        f"victim {ok}/{len(statuses)} × 200 while the squatter held its upload; squatter "
        f"answered {answer.get('status')} after {answer.get('after', float('nan')):.1f} s",
        "-",
        "99 of 100 MiB, then 2 kB/s",
    )


def attack_fair(server: Server, attackers: int = 8, seconds: float = 30.0) -> tuple[str, str, str]:
    clip = _clip(4, 64)
    stop = threading.Event()
    attacker_counts: list[int] = [0, 0]

    def loop(address: str) -> None:
        transport = httpx2.HTTPTransport(local_address=address)
        with httpx2.Client(timeout=60, transport=transport) as client:
            while not stop.is_set():
                response = client.post(
                    f"{server.base}/v1/segment/video",
                    params={"output": "json"},
                    files={"video": ("c.mp4", clip, "video/mp4")},
                )
                attacker_counts[response.status_code == 200] += 1

    threads = [
        threading.Thread(target=loop, args=(f"127.0.0.{2 + i}",), daemon=True)
        for i in range(attackers)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1)
    victim: list[int] = []
    transport = httpx2.HTTPTransport(local_address=f"127.0.0.{2 + attackers}")
    with httpx2.Client(timeout=60, transport=transport) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.monotonic()
            response = client.post(
                f"{server.base}/v1/segment/video",
                params={"output": "json"},
                files={"video": ("c.mp4", clip, "video/mp4")},
            )
            victim.append(response.status_code)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
    stop.set()
    for thread in threads:
        thread.join(60)
    return (
        f"victim {victim.count(200)}/{len(victim)} × 200 "
        f"({100 * victim.count(200) / max(1, len(victim)):.0f} %); attackers "
        f"{attacker_counts[1]} × 200, {attacker_counts[0]} refused",
        "-",
        f"{attackers} looping clients, 4-frame 64×64 mp4",
    )


ATTACKS: dict[str, Callable[[Server], tuple[str, str, str]]] = {
    "parts": attack_parts,
    "overlay": attack_overlay,
    "clips": attack_clips,
    "slow": attack_slow,
    # one request each: what a single request of #2 and #3 really costs (calibrates costs.py)
    "overlay1": lambda server: attack_overlay(server, 1),
    "clip1": lambda server: attack_clips(server, 1),
    "clip1-overlay": lambda server: attack_clips(server, 1, "overlay"),
    # issue 21
    "v2-json": attack_v2_json,
    "v2-bytes": attack_v2_bytes,
    "v2-logits": attack_v2_logits,
    "squat": attack_squat,
    "v2-batch": attack_v2_batch,
    "fair": attack_fair,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default="parts,overlay,clips,slow",
        help=f"comma-separated attacks from: {', '.join(ATTACKS)}",
    )
    parser.add_argument("--log", default="/tmp/ccnet-hostile.log", help="the server's log")
    parser.add_argument(
        "--set", action="append", default=[], metavar="CCNET_X=V", help="a server setting"
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.set)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    log = Path(args.log)
    outcomes = []
    with serve(env, log) as server:
        idle = server.rss_mib()
        for name in chosen:
            print(f"running {name} ...", flush=True)
            outcomes.append(_measure(server, name, lambda: ATTACKS[name](server)))  # noqa: B023
        log_size = log.stat().st_size
    budget = int(env.get("CCNET_MEMORY_BUDGET_MB", "896"))
    print(
        f"\nidle RSS {idle:.0f} MiB, memory budget {budget} MiB; server log "
        f"{log_size / 1e3:.0f} KB after all attacks\n"
    )
    print("| attack | answers | time to refusal | peak RSS above idle | /healthz during |")
    print("|---|---|---|---|---|")
    for o in outcomes:
        answers = f"{o.answers} ({o.notes})" if o.notes else o.answers
        print(
            f"| {o.name} | {answers} | {o.refusal_ms} | {o.peak_above_idle_mib:.0f} MiB "
            f"| {o.healthz} |"
        )


if __name__ == "__main__":
    main()
