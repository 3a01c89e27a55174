"""The service under load: micro-batched servers vs a naive one-request-one-forward server.

Every server is a real process on a free 127.0.0.1 port, all started before the first
measurement and stopped at the end:

* ``torch, batched``: ``ccnet serve --backend torch`` (the service as shipped: bounded queue,
  micro-batching, 503 + Retry-After when the queue is full);
* ``onnxruntime, batched``: ``ccnet serve --backend onnxruntime`` (the checkpoint is exported
  to ONNX on the first start and cached, so later runs start fast);
* ``baseline``: the FastAPI app most code would write, defined below: each request is decoded,
  run through one forward pass of the same model with the same preprocessing and encoded as
  a PNG mask, inside ``run_in_threadpool``; no queue, no batching. It reuses the service's
  decoding, preprocessing and backend, so batching and queueing are the only differences;
* ``torch, batched, queue 8``: the torch server with a small queue, for the overload cell.

All of them serve the bundled ccnet-tiny checkpoint with the same intra-op thread count.

The load is closed-loop: N client threads, each with its own keep-alive connection, POST the
same photograph (scikit-image's astronaut, resized) to ``/v1/segment`` back to back. A cell
starts counting once every client has had one answer and then counts the requests that finish
within the window. Cells are interleaved (every server at every N, then again for the next
round), so a slow spell of a shared machine hits every server alike. The client runs on the
same cores as the servers; its CPU use is reported beside the server's.

In the overload cell 32 clients (twice what saturates a queue of 8 plus a batch of 8) hammer
the small-queue server without backing off: the target is no 5xx other than 503, every 503
with Retry-After, and a bounded p99 for the accepted requests.

Usage:
    python -m bench.service_load                  # 1, 4, 16 clients, 8 s per cell
    python -m bench.service_load --quick          # smoke run: 1 and 4 clients, short cells
    python -m bench.service_load --servers torch --concurrency 16 --max-batch-wait-ms 10
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import httpx2
import numpy as np
from fastapi import FastAPI, HTTPException, UploadFile
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from bench._measure import format_table
from ccnet.inference.backends import load_backend
from ccnet.inference.codecs import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    encode_mask_png,
)
from ccnet.inference.demo import BUNDLED_MODELS
from ccnet.inference.options import LoadOptions
from ccnet.inference.pipeline import labels_from_logits, prepare_image
from ccnet.service.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
MODEL = BUNDLED_MODELS[0]
MODEL_NAME = "ccnet-tiny"
SERVERS = (
    "torch",
    "torch-fp32",
    "torch-1worker",
    "onnxruntime",
    "onnxruntime-fp32",
    "baseline",
    "overload",
)
LABELS = {
    "torch": "torch, batched, auto precision",
    "torch-fp32": "torch, batched, fp32",
    "torch-1worker": "torch, batched, 1 worker",
    "onnxruntime": "onnxruntime, batched, auto precision",
    "onnxruntime-fp32": "onnxruntime, batched, fp32",
    "baseline": "baseline (no batching)",
    "overload": "torch, batched, queue {queue}",
}
# Servers that run with the service's own parallelism defaults (one single-threaded inference
# worker per core); the baseline and the 1-worker variant get ``--threads`` for one forward.
SERVICE_DEFAULTS = ("torch", "torch-fp32", "onnxruntime", "onnxruntime-fp32", "overload")
# Servers pinned to fp32 (what the service served on CPU before precision selection); the
# others run the service's default, ``--precision auto``.
FP32_SERVERS = ("torch-fp32", "onnxruntime-fp32", "torch-1worker")
CONCURRENCY = (1, 4, 16)
QUICK_CONCURRENCY = (1, 4)
OVERLOAD_CLIENTS = 32
OVERLOAD_QUEUE = 8
TARGET_SPEEDUP = 1.5  # batched vs baseline throughput at 16 clients (DESIGN.md §7)
READY_TIMEOUT_S = 300.0  # the first onnxruntime start exports the checkpoint to ONNX
REQUEST_TIMEOUT_S = 120.0


# ------------------------------------------------------------------------ the baseline server


def baseline_app(threads: int, device: str) -> FastAPI:
    """A plain FastAPI app: one request, one forward pass, in the threadpool."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    # the naive server: fp32, every core for each forward (as the service served before)
    options = LoadOptions(backend="torch", device=device, threads=threads, precision="fp32")
    backend = load_backend(None, MODEL, options)
    backend.infer(np.full((1, 3, 64, 64), 127.0, dtype=np.float32))  # the service warms up too
    forward = {"seconds": 0.0, "count": 0}
    lock = threading.Lock()

    def segment(data: bytes) -> bytes:
        try:
            rgb = decode_image(data, DEFAULT_MAX_PIXELS)
        except ImageDecodeError as error:
            raise HTTPException(400, str(error)) from None
        prepared = prepare_image(rgb, options.max_side)
        began = time.perf_counter()
        logits = backend.infer(prepared.pixels[None])[0]
        seconds = time.perf_counter() - began
        with lock:
            forward["seconds"] += seconds
            forward["count"] += 1
        mask = labels_from_logits(logits, prepared.scaled, prepared.size)
        return encode_mask_png(mask, backend.info.palette)

    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:  # the service's metric names, so one parser reads both
        labels = f'{{backend="torch",model="{backend.info.name}"}}'
        with lock:
            return (
                f"ccnet_inference_seconds_sum{labels} {forward['seconds']}\n"
                f"ccnet_inference_seconds_count{labels} {forward['count']}\n"
            )

    @app.post("/v1/segment")
    async def segment_image(image: UploadFile) -> Response:
        data = await image.read()
        return Response(await run_in_threadpool(segment, data), media_type="image/png")

    return app


def serve_baseline(port: int, threads: int, device: str) -> None:
    import uvicorn

    app = baseline_app(threads, device)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _served_precision(client: httpx2.Client) -> str:
    """The image model's precision from /v1/models (the baseline has none)."""
    try:
        models = client.get("/v1/models").json()["models"]
    except (httpx2.HTTPError, ValueError, KeyError, TypeError):
        return ""
    for model in models:
        entry = model.get("precision") if model.get("kind") == "image" else None
        if isinstance(entry, dict):
            return f"{entry.get('chosen')} ({float(entry.get('speedup', 1.0)):.2f}x gate)"
    return ""


@dataclass
class Server:
    """One server process: started, waited on via /readyz, stopped."""

    name: str
    label: str
    argv: list[str]
    env: dict[str, str]
    port: int
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started: float = 0.0
    ready_after_s: float | None = None
    precision: str = ""  # what /v1/models says the image model runs in, and its speed-up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open while the server runs
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def log_tail(self, chars: int = 4000) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        with httpx2.Client(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the {self.label} server exited with status "
                        f"{self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    response = client.get("/readyz")
                except httpx2.TransportError:
                    response = None
                if response is not None and response.status_code == 200:
                    self.ready_after_s = time.perf_counter() - self.started
                    self.precision = _served_precision(client)
                    return
                if response is not None and "load_failed" in response.text:
                    raise RuntimeError(f"the {self.label} server failed: {response.text}")
                time.sleep(0.25)
        raise TimeoutError(f"the {self.label} server was not ready in time:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCNET_")}
    env.update(CCNET_LOG_FORMAT="text", CCNET_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
    return env


def make_server(name: str, args: argparse.Namespace) -> Server:
    port = _free_port()
    env = _server_env()
    if name == "baseline":
        argv = [
            sys.executable, "-m", "bench.service_load", "--baseline-server",
            "--port", str(port), "--threads", str(args.threads), "--device", args.device,
        ]  # fmt: skip
        return Server(name, LABELS[name], argv, env, port)
    backend = "onnxruntime" if name.startswith("onnxruntime") else "torch"
    argv = [
        sys.executable, "-m", "ccnet", "serve", "--backend", backend,
        "--model", str(MODEL), "--device", args.device, "--port", str(port),
        "--max-batch-size", str(args.max_batch_size),
        "--max-batch-wait-ms", str(args.max_batch_wait_ms),
    ]  # fmt: skip
    if name not in SERVICE_DEFAULTS:
        argv += ["--inference-workers", "1", "--threads", str(args.threads)]
    argv += ["--precision", "fp32" if name in FP32_SERVERS else "auto"]
    if backend == "onnxruntime":
        argv += ["--cache-dir", str(args.cache_dir)]
    if name == "overload":
        argv += ["--queue-size", str(args.overload_queue)]
    label = LABELS[name].format(queue=args.overload_queue)
    return Server(name, label, argv, env, port)


# ------------------------------------------------------------------------------------ load


def photograph(size: int) -> bytes:
    """scikit-image's astronaut, resized to ``size``×``size``, as PNG bytes."""
    import skimage.data
    from PIL import Image

    image = Image.fromarray(skimage.data.astronaut()).resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(data: bytes) -> tuple[bytes, str]:
    """A multipart body with the image as field ``image``, built once for every request."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="image"; filename="astronaut.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


_METRIC = re.compile(r"^(ccnet_batch_size|ccnet_inference_seconds)_(sum|count)\{([^}]*)\} (\S+)$")


def scrape(client: httpx2.Client) -> dict[str, float]:
    """The batch-size and forward-time sums and counts of ccnet-tiny from /metrics."""
    values: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        match = _METRIC.match(line)
        if match and f'model="{MODEL_NAME}"' in match.group(3):
            values[f"{match.group(1)}_{match.group(2)}"] = float(match.group(4))
    return values


@dataclass
class CellResult:
    """Everything measured for one (server, clients) pair, summed over rounds."""

    server: str
    clients: int
    window_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # 2xx responses
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    retry_after_missing: int = 0
    metrics: Counter[str] = field(default_factory=Counter)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if code.startswith("2"))

    @property
    def rejected(self) -> int:
        return self.statuses.get("503", 0)

    @property
    def other_5xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if code.startswith("5") and code != "503")

    @property
    def throughput(self) -> float:
        return self.ok / self.window_s if self.window_s else 0.0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    @property
    def mean_batch(self) -> float | None:
        count = self.metrics.get("ccnet_batch_size_count", 0.0)
        return self.metrics["ccnet_batch_size_sum"] / count if count else None

    @property
    def forward_ms_per_image(self) -> float | None:
        images = self.metrics.get("ccnet_batch_size_sum") or self.metrics.get(
            "ccnet_inference_seconds_count", 0.0
        )
        return self.metrics["ccnet_inference_seconds_sum"] * 1e3 / images if images else None

    def summary(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "clients": self.clients,
            "window_s": round(self.window_s, 3),
            "requests_per_s": round(self.throughput, 2),
            "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95),
            "p99_ms": self.percentile(99),
            "status_counts": dict(self.statuses),
            "ok": self.ok,
            "rejected_503": self.rejected,
            "other_5xx": self.other_5xx,
            "errors": self.errors,
            "retry_after_missing": self.retry_after_missing,
            "mean_batch_size": self.mean_batch,
            "forward_ms_per_image": self.forward_ms_per_image,
            "server_cpu_s": round(self.server_cpu_s, 3),
            "client_cpu_s": round(self.client_cpu_s, 3),
            "latencies_ms": [round(v, 2) for v in self.latencies_ms],
        }


def run_cell(
    server: Server, clients: int, duration: float, body: bytes, content_type: str, cell: CellResult
) -> None:
    """One closed-loop run of ``clients`` workers for ``duration`` seconds, added to ``cell``."""
    records: list[tuple[float, int | None, bool]] = []  # (finished, status, has Retry-After)
    latencies: list[tuple[float, float]] = []  # (finished, ms) of 2xx
    stop = threading.Event()
    warmed = threading.Event()
    lock = threading.Lock()
    answered = [0]
    headers = {"Content-Type": content_type}

    def worker() -> None:
        first = True
        with httpx2.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    response = client.post("/v1/segment", content=body, headers=headers)
                    status: int | None = response.status_code
                    retry_after = "retry-after" in response.headers
                except httpx2.HTTPError:
                    status, retry_after = None, False
                finished = time.perf_counter()
                records.append((finished, status, retry_after))
                if status is not None and 200 <= status < 300:
                    latencies.append((finished, (finished - began) * 1e3))
                if first:
                    first = False
                    with lock:
                        answered[0] += 1
                        if answered[0] == clients:
                            warmed.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    with httpx2.Client(base_url=server.url, timeout=30.0) as control:
        warmed.wait(REQUEST_TIMEOUT_S)
        before = scrape(control)
        cpu_before, client_before = _cpu_seconds(server.pid), _client_cpu_seconds()
        start = time.perf_counter()
        stop.wait(duration)
        end = time.perf_counter()
        cpu_after, client_after = _cpu_seconds(server.pid), _client_cpu_seconds()
        after = scrape(control)
    stop.set()
    for thread in threads:
        thread.join()
    cell.window_s += end - start
    cell.server_cpu_s += cpu_after - cpu_before
    cell.client_cpu_s += client_after - client_before
    for key, value in after.items():
        cell.metrics[key] += value - before.get(key, 0.0)
    for finished, status, retry_after in records:
        if not start <= finished <= end:
            continue
        if status is None:
            cell.errors += 1
            continue
        cell.statuses[str(status)] += 1
        if status == 503 and not retry_after:
            cell.retry_after_missing += 1
    cell.latencies_ms += [ms for finished, ms in latencies if start <= finished <= end]


def check_answer(server: Server, body: bytes, content_type: str, size: int) -> None:
    """One request before measuring: a 200 with a PNG mask of the photograph's size."""
    from PIL import Image

    with httpx2.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
        response = client.post("/v1/segment", content=body, headers={"Content-Type": content_type})
    if response.status_code != 200:
        raise RuntimeError(f"{server.label}: {response.status_code} {response.text[:300]}")
    with Image.open(io.BytesIO(response.content)) as mask:
        if mask.size != (size, size):
            raise RuntimeError(f"{server.label}: mask is {mask.size}, expected {(size, size)}")


# ---------------------------------------------------------------------------------- report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}×" if baseline else "n/a"


def machine_lines(
    args: argparse.Namespace, servers: list[Server], png: bytes, load: tuple[float, ...]
) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(
        f"{package} {metadata.version(package)}" for package in ("torch", "onnxruntime")
    )
    ready = ", ".join(f"{s.label} {s.ready_after_s or 0:.1f} s" for s in servers)
    precisions = ", ".join(f"{s.label}: {s.precision}" for s in servers if s.precision) or "-"
    openmp = ", ".join(
        f"{key}={os.environ[key]}"
        for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
        if key in os.environ
    )
    return [
        f"machine: {cpu}, {cores} cores usable; load average before the servers started "
        f"{' '.join(f'{v:.2f}' for v in load)}; {versions}",
        f"model: {MODEL_NAME} ({MODEL.name}), device {args.device}; precision: the baseline "
        f"and the servers marked fp32 float32, the others the service's auto ({precisions}); "
        f"threads: baseline and '1 worker' {args.threads} intra-op threads per forward, the "
        f"other batched servers the service's default (one inference worker per core, a "
        f"lone request on every core); OpenMP environment: {openmp or 'library defaults'}",
        f"input: scikit-image astronaut resized to {args.size}×{args.size} PNG "
        f"({len(png)} bytes), multipart field 'image', POST /v1/segment, mask PNG back",
        f"batching: --max-batch-size {args.max_batch_size} --max-batch-wait-ms "
        f"{args.max_batch_wait_ms:g}, queue {args.queue_size} (overload server: queue "
        f"{args.overload_queue})",
        f"load: closed loop, {args.rounds} round(s) × {args.duration / args.rounds:g} s per "
        f"cell ({args.duration:g} s in all), counted after every client had one answer; "
        "the client threads share the cores with the servers (client CPU column)",
        f"ready after start: {ready}",
        "latency columns: 2xx responses only; CPU %: of one core, over the window; CPU ms/req: "
        "the server's CPU time per 2xx answer; fwd ms/img: forward-pass wall time per image "
        "from the server's metrics (the baseline's forwards overlap, so its figure is the "
        "wall time of one forward among the concurrent ones, not a per-image cost)",
    ]


def table(cells: list[CellResult], labels: dict[str, str]) -> str:
    headers = [
        "server", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "2xx", "503",
        "other 5xx", "errors", "mean batch", "fwd ms/img", "server CPU %", "CPU ms/req",
        "client CPU %",
    ]  # fmt: skip
    rows = []
    for cell in cells:
        batch = cell.mean_batch
        rows.append([
            labels[cell.server], str(cell.clients), f"{cell.throughput:.1f}",
            _ms(cell.percentile(50)), _ms(cell.percentile(95)), _ms(cell.percentile(99)),
            str(cell.ok), str(cell.rejected), str(cell.other_5xx), str(cell.errors),
            "-" if batch is None else f"{batch:.2f}", _ms(cell.forward_ms_per_image),
            f"{100 * cell.server_cpu_s / cell.window_s:.0f}" if cell.window_s else "-",
            f"{1e3 * cell.server_cpu_s / cell.ok:.1f}" if cell.ok else "-",
            f"{100 * cell.client_cpu_s / cell.window_s:.0f}" if cell.window_s else "-",
        ])  # fmt: skip
    return format_table(headers, rows)


def verdicts(
    cells: dict[tuple[str, int], CellResult], args: argparse.Namespace
) -> tuple[list[str], dict[str, Any]]:
    lines: list[str] = []
    targets: dict[str, Any] = {}
    for name, reference in (
        ("torch", "baseline"),
        ("torch-fp32", "baseline"),
        ("torch", "torch-fp32"),
        ("torch", "torch-1worker"),
        ("onnxruntime", "baseline"),
        ("onnxruntime", "onnxruntime-fp32"),
        ("onnxruntime", "torch"),
    ):
        pairs = [
            (n, cells[(name, n)].throughput, cells[(reference, n)].throughput)
            for n in args.concurrency
            if (name, n) in cells and (reference, n) in cells
        ]
        if pairs:
            ratios = ", ".join(f"{n} client(s) {_ratio(a, b)}" for n, a, b in pairs)
            lines.append(f"throughput, {LABELS[name]} / {LABELS[reference]}: {ratios}")
    for name in ("torch", "onnxruntime"):  # low load must not be slower than the naive server
        lone, naive = cells.get((name, 1)), cells.get(("baseline", 1))
        if lone is None or naive is None:
            continue
        ours, theirs = lone.percentile(50), naive.percentile(50)
        speed = lone.throughput / max(naive.throughput, 1e-9)
        latency = theirs / ours if ours and theirs else 0.0
        met = speed >= 1.0 and latency >= 1.0
        targets[f"{name}_one_client_vs_baseline"] = {
            "throughput": speed,
            "p50": latency,
            "met": met,
        }
        lines.append(
            f"target at 1 client, {LABELS[name]} >= 1.0x the baseline (throughput and p50): "
            f"{'met' if met else 'NOT met'} (throughput {speed:.2f}x, p50 {_ms(ours)} vs "
            f"{_ms(theirs)} ms)"
        )
    at = max(args.concurrency)
    if ("torch", at) in cells and ("baseline", at) in cells:
        speedup = cells[("torch", at)].throughput / max(cells[("baseline", at)].throughput, 1e-9)
        met = at >= 16 and speedup >= TARGET_SPEEDUP
        targets["speedup_at_16_clients"] = {"value": speedup, "clients": at, "met": met}
        lines.append(
            f"target ≥ {TARGET_SPEEDUP}× the baseline's throughput at 16 clients: "
            + (
                f"{'met' if met else 'NOT met'} ({speedup:.2f}×)"
                if at >= 16
                else f"not measured (largest run: {at} clients, {speedup:.2f}×)"
            )
        )
    overload = cells.get(("overload", args.overload_clients))
    if overload is not None:
        clean = overload.other_5xx == 0 and overload.errors == 0
        retry = overload.retry_after_missing == 0
        # accepted requests wait for at most a full queue plus the batches being run (one per
        # inference worker); twice that, at the rate the server answered, is the bound
        workers, _ = LoadOptions(backend="torch", device=args.device).parallelism()
        depth = args.overload_queue + workers * args.max_batch_size
        bound = 2e3 * depth / overload.throughput if overload.throughput else None
        p99 = overload.percentile(99)
        bounded = p99 is not None and bound is not None and p99 <= bound
        targets["overload"] = {
            "clients": args.overload_clients,
            "rejected_503": overload.rejected,
            "retry_after_missing": overload.retry_after_missing,
            "other_5xx": overload.other_5xx,
            "errors": overload.errors,
            "p99_ms": p99,
            "p99_bound_ms": bound,
            "met": clean and retry and bounded,
        }
        total = overload.ok + overload.rejected + overload.other_5xx + overload.errors
        lines.append(
            f"overload ({args.overload_clients} clients, queue {args.overload_queue}, no "
            f"back-off): {overload.rejected} of {total} answered 503, "
            f"{overload.retry_after_missing} of them without Retry-After; "
            f"{overload.other_5xx} other 5xx, {overload.errors} transport errors; "
            f"p99 of the {overload.ok} accepted {_ms(p99)} ms (bound: 2 × (queue "
            f"{args.overload_queue} + {workers} worker(s) × batch {args.max_batch_size}) / "
            f"{overload.throughput:.1f} req/s = {_ms(bound)} ms)"
        )
        saturated = cells.get(("torch", at))
        if saturated is not None and saturated.throughput:
            lines.append(
                f"overload vs the torch server at {at} client(s): accepted throughput "
                f"{_ratio(overload.throughput, saturated.throughput)}, p99 "
                f"{_ms(p99)} vs {_ms(saturated.percentile(99))} ms; server CPU per accepted "
                f"request {_ms(1e3 * overload.server_cpu_s / max(overload.ok, 1))} vs "
                f"{_ms(1e3 * saturated.server_cpu_s / max(saturated.ok, 1))} ms"
            )
        lines.append(
            "target at overload, no 5xx but 503 (with Retry-After) and bounded p99: "
            f"{'met' if targets['overload']['met'] else 'NOT met'}"
        )
    return lines, targets


# ------------------------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    load = os.getloadavg()  # other work on the machine, before ours adds to it
    png = photograph(args.size)
    body, content_type = multipart(png)
    servers = [make_server(name, args) for name in args.servers]
    try:
        for server in servers:
            server.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        for server in servers:
            server.wait_ready(deadline)
        for server in servers:
            check_answer(server, body, content_type, args.size)
        plan = [
            (server, n) for n in args.concurrency for server in servers if server.name != "overload"
        ] + [(server, args.overload_clients) for server in servers if server.name == "overload"]
        cells = {(s.name, n): CellResult(s.name, n) for s, n in plan}
        chunk = args.duration / args.rounds
        for _ in range(args.rounds):
            for server, n in plan:
                run_cell(server, n, chunk, body, content_type, cells[(server.name, n)])
    finally:
        for server in servers:
            server.stop()
    labels = {s.name: s.label for s in servers}
    lines, targets = verdicts(cells, args)
    header = machine_lines(args, servers, png, load)
    text = "\n".join([*header, "", table(list(cells.values()), labels), "", *lines])
    raw = {
        "machine": header,
        "settings": {
            "threads": args.threads,
            "device": args.device,
            "size": args.size,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "max_batch_size": args.max_batch_size,
            "max_batch_wait_ms": args.max_batch_wait_ms,
            "queue_size": args.queue_size,
            "overload_queue": args.overload_queue,
            "overload_clients": args.overload_clients,
        },
        "servers": {s.name: {"label": s.label, "ready_after_s": s.ready_after_s} for s in servers},
        "cells": [cell.summary() for cell in cells.values()],
        "comparisons": lines,
        "targets": targets,
    }
    return text, raw


def _servers(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SERVERS)}; got {text!r}")
    return [name for name in SERVERS if name in names]


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated client counts, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"client counts must be >= 1, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> None:
    defaults = Settings.model_fields
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 and 4 clients, short cells")
    parser.add_argument(
        "--servers",
        type=_servers,
        default=list(SERVERS),
        help=f"comma-separated, of {', '.join(SERVERS)} (default: all)",
    )
    parser.add_argument(
        "--concurrency", type=_counts, help="client counts (default 1,4,16; --quick 1,4)"
    )
    parser.add_argument("--duration", type=float, help="seconds per cell (default 8; --quick 1)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per cell (default 4)")
    parser.add_argument("--size", type=int, default=256, help="photograph side in pixels")
    parser.add_argument(
        "--threads",
        type=int,
        default=cores or 1,
        help="intra-op threads of the baseline's and the 1-worker server's forward passes",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--max-batch-size", type=int, default=defaults["max_batch_size"].default)
    parser.add_argument(
        "--max-batch-wait-ms", type=float, default=defaults["max_batch_wait_ms"].default
    )
    parser.add_argument("--overload-clients", type=int, default=OVERLOAD_CLIENTS)
    parser.add_argument("--overload-queue", type=int, default=OVERLOAD_QUEUE)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=defaults["cache_dir"].default,
        help="where the onnxruntime server caches its ONNX export (default: the service's)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server:
        serve_baseline(args.port, args.threads, args.device)
        return
    args.concurrency = args.concurrency or list(QUICK_CONCURRENCY if args.quick else CONCURRENCY)
    args.duration = args.duration or (1.0 if args.quick else 8.0)
    args.rounds = args.rounds or (1 if args.quick else 4)
    args.queue_size = defaults["queue_size"].default
    text, raw = run(args)
    print(text)
    if args.json is not None:
        from ccnet.model.files import write_text_atomic

        write_text_atomic(args.json, json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
