"""``ccnet predict SOURCE --live``: segment a camera, an RTSP/HTTP stream or a file as it plays.

PyAV (FFmpeg) opens the source: a file, a URL (``rtsp://``, ``http://``, ``udp://`` …) or a
capture device (``/dev/video0`` through FFmpeg's ``v4l2``, ``avfoundation`` or ``dshow``
input, picked by ``--input-format``). Each decoded frame goes through a ``StreamSegmenter``
and each mask is written the moment it exists (``frame_000123.png``, palette PNG; with
``--output both`` also ``overlay_000123.jpg``), with one JSON line per frame on stdout so a
pipe sees results as they come. Frames are numbered as decoded; a source that is faster than
the model is still processed frame by frame (a file should not lose frames); ``--max-frames``
stops a live source.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ccnet.inference.stream import StreamMask, StreamSegmenter

__all__ = ["LiveSourceError", "read_frames", "run_live"]


class LiveSourceError(ValueError):
    """The source cannot be opened or read (the message names it)."""


def read_frames(
    source: str, *, input_format: str | None = None, max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames from ``source`` as FFmpeg decodes them.

    Raises:
        LiveSourceError: the source cannot be opened, has no video or fails mid-way.
    """
    import av

    options = {"rtsp_transport": "tcp"} if source.startswith("rtsp://") else {}
    try:
        container = av.open(source, format=input_format, options=options, timeout=10.0)
    except (av.error.FFmpegError, OSError) as error:
        raise LiveSourceError(f"{source}: cannot open: {error}") from None
    try:
        if not container.streams.video:
            raise LiveSourceError(f"{source}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
                count += 1
                if max_frames is not None and count >= max_frames:
                    return
        except av.error.FFmpegError as error:
            raise LiveSourceError(
                f"{source}: decoding failed after {count} frames: {error}"
            ) from None
    finally:
        container.close()


def _write(
    out_dir: Path, result: StreamMask, rgb: np.ndarray | None, live: StreamSegmenter, alpha: float
) -> dict[str, Any]:
    from ccnet.inference.codecs import encode_mask_png
    from ccnet.inference.overlay import compose_overlay
    from ccnet.inference.render import encode_overlay_image

    name = f"frame_{result.frame:06d}.png"
    (out_dir / name).write_bytes(encode_mask_png(result.mask, live.palette))
    written = {"mask": name}
    if rgb is not None:
        overlay = compose_overlay(rgb, result.mask, live.palette, live.classes, alpha=alpha)
        written["overlay"] = f"overlay_{result.frame:06d}.jpg"
        (out_dir / written["overlay"]).write_bytes(encode_overlay_image(overlay, "jpeg"))
    return written


def run_live(
    source: str,
    live: StreamSegmenter,
    out_dir: Path,
    *,
    overlay: bool = False,
    alpha: float = 0.5,
    input_format: str | None = None,
    max_frames: int | None = None,
    stdout: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Segment ``source`` frame by frame into ``out_dir``; returns the run's summary.

    Each answered frame prints one JSON line: ``{"frame", "context", "files", "latency_ms"}``
    (latency from the frame's decode to its mask written).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    kept: dict[int, tuple[np.ndarray | None, float]] = {}  # frames waiting for lookahead
    frames = 0
    began = time.perf_counter()

    def emit(results: list[StreamMask]) -> None:
        for result in results:
            rgb, arrived = kept.pop(result.frame)
            files = _write(out_dir, result, rgb, live, alpha)
            line = {
                "frame": result.frame,
                "context": list(result.context),
                "files": files,
                "latency_ms": round((time.perf_counter() - arrived) * 1e3, 2),
            }
            print(json.dumps(line), file=stdout, flush=True)

    for index, rgb in enumerate(
        read_frames(source, input_format=input_format, max_frames=max_frames)
    ):
        kept[index] = (rgb if overlay else None, time.perf_counter())
        emit(live.push(rgb, index))
        frames += 1
    emit(live.flush())
    elapsed = time.perf_counter() - began
    return {
        "source": source,
        "frames": frames,
        "window": live.window,
        "lookahead": live.lookahead,
        "seconds": round(elapsed, 3),
        "fps": round(frames / elapsed, 2) if elapsed > 0 else None,
        "output_dir": str(out_dir),
    }
