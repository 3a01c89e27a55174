"""Live video: WS /v1/stream against the two ways a client segments a camera without it.

    python -m bench.live_stream                      # everything, about 10 min on 2 cores
    python -m bench.live_stream --parts latency --frames 20 --sessions 1

Parts (``--parts``, comma-separated):

- ``engine``: per-frame compute in one process, interleaved: the full 4-frame window, one
  incremental step and its halves, the 2D model on one frame (320×448, fp32).
- ``latency``: a real ``ccnet serve`` on 127.0.0.1 (bundled demo models, ``--threads``
  intra-op threads). 1, 2 and 4 clients, each lock-step (send a frame, wait for its answer)
  over ``--frames`` 320×448 frames, three ways: **stream** (``WS /v1/stream``, ccnet3d-tiny,
  causal), **window** (``POST /v1/segment/video`` with the last T frames as an mp4 per frame:
  what a client of the clip API has to do today; the mp4s are encoded before timing), **image**
  (``POST /v1/segment``, the 2D ccnet-tiny, same backbone). Per-frame latency p50/p99 and
  sustained frames/s (all clients' frames / wall time); the modes run in turn per client count.
- ``stability``: offline (the same engine as the service), ``ccnet synth --kind clips``-style
  clips (moving textured objects, some corrupted frames): the share of pixels whose label
  changes between consecutive frames where the ground truth does not (flicker), and the mIoU,
  for the 2D model per frame, the live 3D stream causal and with lookahead 1 and 2.
- ``hostile``: 60 frames pushed by one client as fast as it can without reading (every frame
  must be answered or reported skipped; server RSS growth vs the session's admitted bytes;
  ``/healthz`` polled throughout), 1,000 idle sessions closed by the idle timeout, and the
  time the session cap takes to refuse one past its limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._serve import serve_process

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 320, 448


# ----------------------------------------------------------------------------- server


def _server(env: dict[str, str], log: Path) -> contextlib.AbstractContextManager[Any]:
    """``ccnet serve`` with ``env`` (quiet text logs, no API key): (base URL, process)."""
    quiet = {"CCNET_LOG_FORMAT": "text", "CCNET_LOG_LEVEL": "warning", **env}
    return serve_process(log, quiet, ready_s=180, drop=("CCNET_API_KEY",))


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# ----------------------------------------------------------------------------- inputs


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """320×448 frames of a moving synthetic scene (the synth renderer at 448, cropped)."""
    from ccnet.inference.synth_scenes import render_clip, sample_rng

    images, _, _ = render_clip(sample_rng(seed, "clips", "val", 0), size=WIDTH, frames=count)
    return [np.ascontiguousarray(image[:HEIGHT]) for image in images]


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _window_clips(frames: list[np.ndarray], window: int) -> list[bytes]:
    """Per frame t, frames [t-T+1, t] as an mp4 (what a clip-API client uploads per frame)."""
    from ccnet.inference.video import encode_overlay_video

    return [
        encode_overlay_video(np.stack(frames[max(0, t - window + 1) : t + 1]), 10.0, "mp4")
        for t in range(len(frames))
    ]


# ----------------------------------------------------------------------------- latency


async def _stream_client(url: str, payloads: list[bytes]) -> list[float]:
    import websockets

    latencies = []
    async with websockets.connect(url, max_size=1 << 24) as ws:
        json.loads(await ws.recv())  # ready
        for payload in payloads:
            began = time.perf_counter()
            await ws.send(payload)
            header = json.loads(await ws.recv())
            if header["type"] != "mask":
                raise RuntimeError(f"unexpected answer {header}")
            await ws.recv()  # the mask PNG
            latencies.append(time.perf_counter() - began)
        await ws.send(json.dumps({"type": "end"}))
        async for _ in ws:
            pass
    return latencies


async def _http_client(url: str, field: str, payloads: list[bytes], kind: str) -> list[float]:
    import httpx2

    latencies = []
    media = "video/mp4" if field == "video" else "image/jpeg"
    async with httpx2.AsyncClient(timeout=120) as client:
        for payload in payloads:
            began = time.perf_counter()
            response = await client.post(url, files={field: (f"f.{kind}", payload, media)})
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
            latencies.append(time.perf_counter() - began)
    return latencies


async def _run_mode(mode: str, base: str, sessions: int, data: dict) -> dict:
    ws_base = base.replace("http", "ws", 1)
    if mode == "stream":
        url = f"{ws_base}/v1/stream?model=ccnet3d-tiny"
        jobs = [_stream_client(url, data["jpegs"]) for _ in range(sessions)]
    elif mode == "window":
        url = f"{base}/v1/segment/video?model=ccnet3d-tiny&output=zip"
        jobs = [_http_client(url, "video", data["clips"], "mp4") for _ in range(sessions)]
    else:
        url = f"{base}/v1/segment?model=ccnet-tiny&output=png"
        jobs = [_http_client(url, "image", data["jpegs"], "jpg") for _ in range(sessions)]
    began = time.perf_counter()
    results = await asyncio.gather(*jobs)
    wall = time.perf_counter() - began
    latencies = sorted(x for r in results for x in r)
    return {
        "mode": mode,
        "sessions": sessions,
        "frames": len(latencies),
        "p50_ms": round(1e3 * statistics.median(latencies), 1),
        "p99_ms": round(1e3 * float(np.percentile(latencies, 99)), 1),
        "fps": round(len(latencies) / wall, 2),
    }


def part_latency(args: argparse.Namespace, work: Path) -> list[dict]:
    frames = _frames(args.frames)
    data = {"jpegs": [_jpeg(f) for f in frames], "clips": _window_clips(frames, 4)}
    env = {
        "CCNET_THREADS": str(args.threads),
        "CCNET_PRECISION": "fp32",
        "CCNET_STREAM_MAX_SESSIONS": "16",
        "CCNET_VIDEO_QUEUE_SIZE": "16",
        "CCNET_MAX_VIDEO_SIDE": str(WIDTH),  # frames are not scaled down: 320×448 is the input
    }
    rows = []
    with _server(env, work / "latency.log") as (base, _):
        for mode in ("stream", "window", "image"):  # warm-up: first requests pay lazy set-up
            asyncio.run(_run_mode(mode, base, 1, {k: v[:3] for k, v in data.items()}))
        for sessions in args.sessions:
            for mode in ("stream", "window", "image"):
                row = asyncio.run(_run_mode(mode, base, sessions, data))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


# ----------------------------------------------------------------------------- engine


def part_engine(args: argparse.Namespace) -> list[dict]:
    """Per-frame compute in process, interleaved round by round (``bench._measure``): the
    full T-frame window, one incremental step (backbone + window step), its two halves, and
    the 2D model on one frame; 320×448, fp32, ``--threads`` threads."""
    import torch

    from bench._measure import time_interleaved
    from ccnet.inference.demo import resolve_model_file
    from ccnet.model import load_checkpoint
    from ccnet.model.streaming import FrameEncoder, WindowDecoder

    torch.manual_seed(0)
    clip_model = load_checkpoint(resolve_model_file("ccnet3d-tiny"))[0].eval()
    image_model = load_checkpoint(resolve_model_file("ccnet-tiny"))[0].eval()
    encoder, decoder = FrameEncoder(clip_model).eval(), WindowDecoder(clip_model).eval()
    window = torch.randn(1, 3, 4, HEIGHT, WIDTH)
    frame = window[:, :, -1].contiguous()
    with torch.inference_mode():
        states = [encoder(window[:, :, t].contiguous()) for t in range(4)]
        stacked = [torch.stack([s[i] for s in states], 2) for i in range(1, len(states[0]))]
        target = torch.tensor([3])

        def step() -> object:
            encoder(frame)
            return decoder(states[3][0], *stacked, target)

        times = time_interleaved(
            {
                "full 4-frame window (re-run per frame)": lambda: clip_model(window),
                "incremental step (backbone + window step)": step,
                "  backbone + per-frame head convs (encode)": lambda: encoder(frame),
                "  window step: 1st pass over 4, 2nd pass + head for 1 (decode)": lambda: decoder(
                    states[3][0], *stacked, target
                ),
                "2D model, one frame (ccnet-tiny)": lambda: image_model(frame),
            },
            rounds=args.rounds,
        )
    base = times["2D model, one frame (ccnet-tiny)"]
    rows = [{"what": k, "ms": round(v, 1), "x_2d": round(v / base, 2)} for k, v in times.items()]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


# ----------------------------------------------------------------------------- stability


def _flicker_and_confusion(preds: list[np.ndarray], truth: list[np.ndarray], classes: int):
    changed = stable = 0
    for t in range(1, len(preds)):
        same_truth = truth[t] == truth[t - 1]
        stable += int(same_truth.sum())
        changed += int(((preds[t] != preds[t - 1]) & same_truth).sum())
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for p, g in zip(preds, truth, strict=True):
        valid = g < classes
        np.add.at(confusion, (g[valid], p[valid]), 1)
    return changed, stable, confusion


def _miou(confusion: np.ndarray) -> float:
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def part_stability(args: argparse.Namespace) -> list[dict]:
    from ccnet.inference.segmenter import Segmenter
    from ccnet.inference.stream import StreamSegmenter
    from ccnet.inference.synth_scenes import render_clip, sample_rng

    image = Segmenter.from_file("ccnet-tiny", backend="torch", device="cpu", precision="fp32")
    classes = len(image.classes)
    ways = {
        "2D per frame (ccnet-tiny)": None,
        "live 3D, causal": 0,
        "live 3D, lookahead 1": 1,
        "live 3D, lookahead 2": 2,
    }
    totals = {name: [0, 0, np.zeros((classes, classes), np.int64)] for name in ways}
    for index in range(args.clips):
        images, masks, _ = render_clip(
            sample_rng(7, "clips", "val", index), size=128, frames=args.clip_frames
        )
        truth = [np.asarray(m) for m in masks]
        for name, lookahead in ways.items():
            if lookahead is None:
                preds = [image(frame).mask for frame in images]
            else:
                live = StreamSegmenter.from_file("ccnet3d-tiny", lookahead=lookahead)
                answered = [r for frame in images for r in live.push(frame)] + live.flush()
                preds = [r.mask for r in sorted(answered, key=lambda r: r.frame)]
            changed, stable, confusion = _flicker_and_confusion(preds, truth, classes)
            totals[name][0] += changed
            totals[name][1] += stable
            totals[name][2] += confusion
    rows = []
    for name, (changed, stable, confusion) in totals.items():
        row = {
            "way": name,
            "flicker_pct": round(100 * changed / max(stable, 1), 3),
            "miou_pct": round(100 * _miou(confusion), 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ----------------------------------------------------------------------------- hostile


def _healthz_poller(base: str, stop: threading.Event, out: list[float]) -> None:
    """On its own thread, so the flooding client's event loop does not delay the probes."""
    import httpx2

    with httpx2.Client(timeout=5) as client:
        while not stop.is_set():
            began = time.perf_counter()
            response = client.get(f"{base}/healthz")
            out.append((time.perf_counter() - began) if response.status_code == 200 else 99.0)
            time.sleep(0.05)


async def _flood(base: str, pid: int, payloads: list[bytes]) -> dict:
    import websockets

    url = base.replace("http", "ws", 1) + "/v1/stream?model=ccnet3d-tiny"
    health: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=_healthz_poller, args=(base, stop, health), daemon=True)
    poller.start()
    rss_before = _rss_bytes(pid)
    peak = rss_before
    async with websockets.connect(url, max_size=1 << 24) as ws:
        ready = json.loads(await ws.recv())
        for payload in payloads:  # as fast as the socket takes them, nothing read
            await ws.send(payload)
            peak = max(peak, _rss_bytes(pid))
        await ws.send(json.dumps({"type": "end"}))
        for _ in range(20):  # the server works through the queue while nobody reads
            await asyncio.sleep(0.1)
            peak = max(peak, _rss_bytes(pid))
        answered, skipped, end = [], [], None
        async for message in ws:
            if isinstance(message, bytes):
                continue
            body = json.loads(message)
            if body["type"] == "mask":
                answered.append(body["frame"])
            elif body["type"] == "skipped":
                skipped += body["skipped"]
            elif body["type"] == "end":
                end = body
    stop.set()
    poller.join()
    every = sorted(answered + skipped) == list(range(len(payloads)))
    return {
        "frames_sent": len(payloads),
        "answered": len(answered),
        "skipped": len(skipped),
        "every_frame_answered_or_skipped": every,
        "end": end,
        "reserved_mib": round(ready["reserved_bytes"] / 2**20, 1),
        "rss_growth_mib": round((peak - rss_before) / 2**20, 1),
        "healthz_max_ms": round(1e3 * max(health), 1),
        "healthz_p50_ms": round(1e3 * statistics.median(health), 1),
        "healthz_polls": len(health),
    }


async def _idle_sessions(base: str, count: int, timeout_s: float) -> dict:
    import websockets

    url = base.replace("http", "ws", 1) + "/v1/stream?model=ccnet3d-tiny"

    async def one() -> tuple[int | None, str]:
        async with websockets.connect(url, open_timeout=60) as ws:
            json.loads(await ws.recv())
            error = json.loads(await asyncio.wait_for(ws.recv(), timeout_s * 4 + 60))
            with contextlib.suppress(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)
            return ws.close_code, error["code"]

    began = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    closed = [r for r in results if isinstance(r, tuple) and r == (1001, "idle_timeout")]
    return {
        "idle_sessions": count,
        "closed_by_idle_timeout": len(closed),
        "failures": [repr(r) for r in results if not isinstance(r, tuple)][:3],
        "seconds": round(time.perf_counter() - began, 1),
    }


async def _cap(base: str, cap: int) -> dict:
    import websockets

    url = base.replace("http", "ws", 1) + "/v1/stream?model=ccnet3d-tiny"
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(cap):
            ws = await stack.enter_async_context(websockets.connect(url))
            json.loads(await ws.recv())
        times = []
        for _ in range(20):
            began = time.perf_counter()
            async with websockets.connect(url) as extra:
                error = json.loads(await extra.recv())
                with contextlib.suppress(websockets.ConnectionClosed):
                    await extra.recv()
            times.append(time.perf_counter() - began)
            assert error["code"] == "overloaded" and extra.close_code == 1013, error
    return {
        "cap": cap,
        "refusal_p50_ms": round(1e3 * statistics.median(times), 1),
        "refusal_max_ms": round(1e3 * max(times), 1),
    }


def part_hostile(args: argparse.Namespace, work: Path) -> dict:
    frames = _frames(12)
    payloads = [_jpeg(frames[i % len(frames)]) for i in range(60)]
    env = {"CCNET_THREADS": str(args.threads), "CCNET_PRECISION": "fp32"}
    result: dict = {}
    with _server(env, work / "flood.log") as (base, process):
        result["flood"] = asyncio.run(_flood(base, process.pid, payloads))
        print(json.dumps(result["flood"]), flush=True)
    idle_env = {
        **env,
        "CCNET_STREAM_MAX_SESSIONS": str(args.idle_sessions + 10),
        "CCNET_STREAM_IDLE_TIMEOUT_S": "5",
        "CCNET_MEMORY_BUDGET_MB": "1000000",  # accounting only: 1,000 sessions' worst cases
        "CCNET_MAX_CONNECTIONS": str(args.idle_sessions + 100),
    }
    with _server(idle_env, work / "idle.log") as (base, _):
        result["idle"] = asyncio.run(_idle_sessions(base, args.idle_sessions, 5))
        print(json.dumps(result["idle"]), flush=True)
    with _server({**env, "CCNET_STREAM_MAX_SESSIONS": "4"}, work / "cap.log") as (base, _):
        result["cap"] = asyncio.run(_cap(base, 4))
        print(json.dumps(result["cap"]), flush=True)
    return result


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="engine,latency,stability,hostile")
    parser.add_argument("--rounds", type=int, default=15, help="timing rounds (engine)")
    parser.add_argument("--frames", type=int, default=24, help="frames per client (latency)")
    parser.add_argument("--sessions", default="1,2,4", help="concurrent clients (latency)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per pass")
    parser.add_argument("--clips", type=int, default=8, help="clips (stability)")
    parser.add_argument("--clip-frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--idle-sessions", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.sessions = [int(s) for s in args.sessions.split(",")]
    parts = set(args.parts.split(","))
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    results: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "input": f"{HEIGHT}x{WIDTH} JPEG frames, fp32, CPU",
        }
    }
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if "engine" in parts:
            results["engine"] = part_engine(args)
        if "latency" in parts:
            results["latency"] = part_latency(args, work)
        if "stability" in parts:
            results["stability"] = part_stability(args)
        if "hostile" in parts:
            results["hostile"] = part_hostile(args, work)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
