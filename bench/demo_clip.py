"""What the demo page asks of the server for one clip: before and after issue 22 #12.

Before, the page segmented a clip once for its statistics, again for the server-rendered
overlay GIF, again on every opacity change and once more for the masks' zip. Now it asks
once (``output=json&masks=true&frames=true``) and does the rest itself. This bench replays
both request sequences against one live ``ccnet serve`` (the bundled demo models), on a
synthetic clip, interleaved over ``--rounds``, and prints the median wall time, inference
count and bytes of each, with their ratio.

    python -m bench.demo_clip [--frames 48] [--size 320x240] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx2
import numpy as np

from bench._serve import serve_process
from ccnet.inference.video import encode_overlay_video

ROUTE = "/v1/segment/video"
# (query, what the page used it for); the old page's sequence for an upload, one opacity
# change and the zip download
BEFORE = [
    ({"output": "json"}, "statistics"),
    ({"output": "overlay", "format": "gif", "alpha": "0.5"}, "overlay"),
    ({"output": "overlay", "format": "gif", "alpha": "0.8"}, "opacity change"),
    ({"output": "zip"}, "zip"),
]
AFTER = [({"output": "json", "masks": "true", "frames": "true"}, "everything")]


def synthetic_clip(frames: int, width: int, height: int) -> bytes:
    """A textured background with a square moving over it, as an MP4."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    clip = np.repeat(background[None], frames, axis=0)
    side = min(width, height) // 3
    for t in range(frames):
        x = (t * 4) % (width - side)
        clip[t, height // 3 : height // 3 + side, x : x + side] = (30, 200, 60)
    return encode_overlay_video(clip, 12.0, "mp4")


def run_sequence(client: httpx2.Client, clip: bytes, sequence: list) -> tuple[float, int]:
    """Seconds and response bytes of one page's worth of requests."""
    began = time.perf_counter()
    total = 0
    for params, _what in sequence:
        response = client.post(
            ROUTE, params=params, files={"video": ("clip.mp4", clip, "video/mp4")}
        )
        response.raise_for_status()
        total += len(response.content)
    return time.perf_counter() - began, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    clip = synthetic_clip(args.frames, width, height)
    env = {"CCNET_PRECISION": "fp32", "CCNET_LOG_FORMAT": "text"}
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "serve.log"
        with (
            serve_process(log, env, drop=("CCNET_MODEL_DIR", "CCNET_MODELS")) as (base, _),
            httpx2.Client(base_url=base, timeout=300) as client,
        ):
            run_sequence(client, clip, AFTER)  # warm-up
            times: dict[str, list[float]] = {"before": [], "after": []}
            sizes: dict[str, int] = {}
            for _ in range(args.rounds):
                for name, sequence in (("before", BEFORE), ("after", AFTER)):
                    seconds, nbytes = run_sequence(client, clip, sequence)
                    times[name].append(seconds)
                    sizes[name] = nbytes
    print(f"clip: {args.frames} frames of {width}×{height}, {len(clip)} bytes (MP4)")
    print("| page | requests (inferences) | median wall s | response bytes |")
    print("|---|---|---|---|")
    for name, sequence in (("before", BEFORE), ("after", AFTER)):
        median = statistics.median(times[name])
        print(f"| {name} | {len(sequence)} | {median:.2f} | {sizes[name]} |")
    ratio = statistics.median(times["before"]) / statistics.median(times["after"])
    print(f"before / after wall time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
