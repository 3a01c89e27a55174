"""Where a served model's prepared artifact lives in the cache, and its cache key.

``ccnet serve`` prepares every model once, in the parent process, before the workers start
(``export.prepare``): a checkpoint becomes an exported, parity-checked ONNX for onnxruntime,
and that ONNX a built engine for tensorrt. The workers only look the artifact up here. Both
sides compute the same paths from the same inputs, so nothing but the cache itself passes
between them, and a stale artifact is never picked up:

* ONNX: ``CACHE/onnx/STEM-KEY/model.onnx``, KEY over the checkpoint's SHA-256 and the export
  options (``SERVE_EXPORT``);
* engine: ``CACHE/tensorrt/NAME-KEY/engine.plan``, KEY over the ONNX's SHA-256, the
  optimisation profile, the TensorRT version, the plugin library's SHA-256 (or none) and the
  GPU model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccnet.export.runtime import availability
from ccnet.export.runtime.formats import DEFAULT_CLIP_WINDOW
from ccnet.export.runtime.plugins import plugin_sha256
from ccnet.export.runtime.sidecar import read_engine_sidecar, read_sidecar
from ccnet.model.files import file_sha256

__all__ = [
    "ENGINE_FILE",
    "SERVE_EXPORT",
    "EngineKey",
    "NotPreparedError",
    "ServeLimits",
    "engine_artifact",
    "engine_key",
    "engine_profile",
    "onnx_artifact",
    "prepared_engine",
    "prepared_onnx",
]

#: What the service exports a checkpoint with (``export.onnx.export_onnx`` keywords);
#: ``revision`` is bumped when the exporter's output changes for the same options.
SERVE_EXPORT: dict[str, Any] = {"dtype": "fp32", "opset": 18, "revision": 1}
ENGINE_FILE = "engine.plan"
Shape = tuple[int, ...]


class NotPreparedError(FileNotFoundError):
    """The artifact a backend runs has not been prepared (or is stale or damaged)."""


@dataclass(frozen=True)
class ServeLimits:
    """The service settings an engine's optimisation profile is sized from."""

    max_side: int
    max_video_side: int
    max_batch_size: int

    @classmethod
    def from_settings(cls, settings: Any) -> ServeLimits:
        return cls(settings.max_side, settings.max_video_side, settings.max_batch_size)


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on besides its ONNX file."""

    profile: tuple[Shape, Shape, Shape]
    tensorrt: str
    plugin_sha256: str | None
    gpu: str


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def onnx_artifact(checkpoint: Path, cache_dir: Path) -> Path:
    """Where the service's ONNX export of ``checkpoint`` lives (it may not exist yet)."""
    key = _digest({"checkpoint": file_sha256(checkpoint), "export": SERVE_EXPORT})
    return Path(cache_dir) / "onnx" / f"{checkpoint.stem}-{key}" / "model.onnx"


def engine_profile(sidecar: dict[str, Any], limits: ServeLimits) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) input shapes for serving the ONNX described by ``sidecar``.

    Images: batch 1..``max_batch_size``, sides 8..``max_side`` (rounded up to 8). Clips: batch
    1, 1..window frames, sides 8..``max_video_side``.
    """
    video = len(sidecar["inputs"][0]["shape"]) == 5
    side = -(-(limits.max_video_side if video else limits.max_side) // 8) * 8
    batch = 1 if video else limits.max_batch_size
    frames = int(
        sidecar.get("model", {}).get("config", {}).get("clip_length") or DEFAULT_CLIP_WINDOW
    )
    lead = (batch, 3, frames) if video else (batch, 3)
    low = (1, 3, 1) if video else (1, 3)
    opt = min(side, 512)
    return (*low, 8, 8), (*lead, opt, opt), (*lead, side, side)


def engine_key(
    sidecar: dict[str, Any], limits: ServeLimits, *, tensorrt_version: str, plugin: Path | None
) -> EngineKey:
    """The key of the engine that serves the ONNX of ``sidecar`` on this machine's GPU.

    Raises:
        ValueError: no CUDA GPU is visible.
    """
    return EngineKey(
        profile=engine_profile(sidecar, limits),
        tensorrt=tensorrt_version,
        plugin_sha256=plugin_sha256(plugin) if plugin is not None else None,
        gpu=availability.gpu_name(),
    )


def engine_artifact(onnx_path: Path, cache_dir: Path, key: EngineKey) -> Path:
    """Where the engine for ``onnx_path`` under ``key`` lives (it may not exist yet)."""
    digest = _digest(
        {
            "onnx": file_sha256(onnx_path),
            "profile": [list(shape) for shape in key.profile],
            "tensorrt": key.tensorrt,
            "plugin": key.plugin_sha256,
            "gpu": key.gpu,
        }
    )
    return Path(cache_dir) / "tensorrt" / f"{onnx_path.parent.name}-{digest}" / ENGINE_FILE


def prepared_onnx(checkpoint: Path, cache_dir: Path) -> Path:
    """The prepared ONNX of ``checkpoint``, validated against its sidecar.

    Raises:
        NotPreparedError: not there, or stale or damaged.
    """
    path = onnx_artifact(checkpoint, cache_dir)
    try:
        read_sidecar(path)
    except (OSError, ValueError) as error:
        raise NotPreparedError(
            f"{checkpoint}: no prepared ONNX export in {cache_dir} ({error}); `ccnet serve` "
            "prepares it before starting, or serve an export from `ccnet export onnx`"
        ) from None
    return path


def prepared_engine(onnx_path: Path, cache_dir: Path, key: EngineKey) -> Path:
    """The prepared engine of ``onnx_path`` under ``key``, validated against its sidecar.

    Raises:
        NotPreparedError: not there, or stale or damaged.
    """
    path = engine_artifact(onnx_path, cache_dir, key)
    try:
        read_engine_sidecar(path)
    except (OSError, ValueError) as error:
        raise NotPreparedError(
            f"{onnx_path}: no prepared TensorRT engine in {cache_dir} for TensorRT "
            f"{key.tensorrt} on {key.gpu} ({error}); `ccnet serve` builds it before starting"
        ) from None
    return path
