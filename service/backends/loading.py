"""From a model file and a backend name to a ready ``InferenceBackend``.

A checkpoint (``.pt``) runs on any backend: for onnxruntime it is exported once (and checked
against PyTorch) into the cache directory, keyed by the checkpoint's SHA-256; for tensorrt an
engine is then built from that export and cached beside it. An ``.onnx`` export runs on
onnxruntime or tensorrt, an engine (``.engine``/``.plan``) only on tensorrt. When TensorRT
cannot be used here (no library, GPU or plugin) the loader falls back to onnxruntime and says
so in the log, so one GPU image serves on any machine.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from .base import BackendError, InferenceBackend, ModelInfo

__all__ = ["BACKENDS", "info_from_meta", "load_backend"]

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_ENGINE_SUFFIXES = (".engine", ".plan")
log = logging.getLogger("ccnet.service.models")


def info_from_meta(name: str | None, meta: dict[str, Any], source: Path) -> ModelInfo:
    config = meta.get("config", {})
    video = bool(config.get("video"))
    return ModelInfo(
        name=name or config.get("name") or source.stem,
        kind="video" if video else "image",
        classes=list(meta["classes"]),
        palette=[list(c) for c in meta["palette"]],
        window=int(config.get("clip_length") or 4) if video else None,
        source=str(source),
    )


def _info_from_sidecar(name: str | None, sidecar: dict[str, Any], source: Path) -> ModelInfo:
    """From an ONNX sidecar or an engine sidecar (which has no model config: the input's
    rank tells images from clips)."""
    model = sidecar.get("model", {})
    config = dict(model.get("config", {}))
    config.setdefault("video", len(sidecar["inputs"][0]["shape"]) == 5)
    meta = {**sidecar, "config": config}
    info = info_from_meta(name or model.get("name"), meta, source)
    if info.name == "model":  # ``ccnet export onnx`` always writes model.onnx
        info = dataclasses.replace(info, name=source.parent.name)
    return info


def _checksum(path: Path) -> str:
    from export.sidecar import file_sha256

    return file_sha256(path)[:16]


def _cached_onnx(checkpoint: Path, cache_dir: Path) -> Path:
    """The checkpoint's ONNX export in the cache, exported (and parity-checked) if missing."""
    from export.onnx import export_onnx
    from export.sidecar import read_sidecar

    target = cache_dir / "onnx" / f"{checkpoint.stem}-{_checksum(checkpoint)}"
    onnx_path = target / "model.onnx"
    if onnx_path.is_file():
        try:
            read_sidecar(onnx_path)  # verifies the checksum: a half-written pair is redone
            return onnx_path
        except (OSError, ValueError):
            log.warning("cached export %s is stale or damaged; exporting again", onnx_path)
    log.info("exporting %s to ONNX in %s (once; cached)", checkpoint, target)
    return export_onnx(checkpoint, target, progress=lambda line: log.info("%s", line)).model_path


def _cached_engine(onnx_path: Path, cache_dir: Path, plugin: Path | None, settings: Any) -> Path:
    from export.engine import ShapeProfile, build_engine, resolve_plugin
    from export.sidecar import read_sidecar

    sidecar = read_sidecar(onnx_path)
    video = len(sidecar["inputs"][0]["shape"]) == 5
    side = -(-settings.max_video_side // 8) * 8 if video else -(-settings.max_side // 8) * 8
    batch = 1 if video else settings.max_batch_size
    frames = int(sidecar.get("model", {}).get("config", {}).get("clip_length") or 4)
    lead = (batch, 3, frames) if video else (batch, 3)
    low = (1, 3, 1) if video else (1, 3)
    profile = ShapeProfile(
        min=(*low, 8, 8), opt=(*lead, min(side, 512), min(side, 512)), max=(*lead, side, side)
    )
    target = cache_dir / "tensorrt" / f"{onnx_path.parent.name}-{_checksum(onnx_path)}"
    engine = target / f"engine-b{batch}-s{side}.plan"
    if not engine.is_file():
        log.info("building a TensorRT engine for %s in %s (once; cached)", onnx_path, engine)
        build_engine(
            onnx_path,
            engine,
            profile,
            plugin=resolve_plugin(plugin),
            progress=lambda line: log.info("%s", line),
        )
    return engine


def _tensorrt(name: str | None, path: Path, settings: Any) -> InferenceBackend:
    from export.engine import resolve_plugin

    from .tensorrt_backend import TensorRTBackend, read_engine_sidecar

    try:
        plugin = resolve_plugin(settings.trt_plugin)
    except FileNotFoundError as error:
        raise BackendError(str(error)) from error
    if path.suffix == ".pt":
        path = _cached_onnx(path, settings.cache_dir)
    if path.suffix == ".onnx":
        from export.sidecar import read_sidecar

        name = name or _info_from_sidecar(None, read_sidecar(path), path).name
        try:
            path = _cached_engine(path, settings.cache_dir, plugin, settings)
        except ValueError as error:
            raise BackendError(f"cannot build a TensorRT engine: {error}") from error
    info = _info_from_sidecar(name, read_engine_sidecar(path), path)
    return TensorRTBackend(info, path, plugin=plugin)


def _onnxruntime(name: str | None, path: Path, settings: Any) -> InferenceBackend:
    from export.sidecar import read_sidecar

    from .onnxruntime_backend import OnnxRuntimeBackend

    if path.suffix in _ENGINE_SUFFIXES:
        raise BackendError(f"{path}: a TensorRT engine runs on the tensorrt backend only")
    if path.suffix == ".pt":
        path = _cached_onnx(path, settings.cache_dir)
    try:
        sidecar = read_sidecar(path)
    except (OSError, ValueError) as error:
        raise BackendError(f"{path}: {error}") from error
    info = _info_from_sidecar(name, sidecar, path)
    _, threads = settings.parallelism()
    return OnnxRuntimeBackend(info, path, device=settings.device, threads=threads)


def _torch(name: str | None, path: Path, settings: Any) -> InferenceBackend:
    from model import load_checkpoint

    from .torch_backend import TorchBackend

    if path.suffix != ".pt":
        raise BackendError(
            f"{path}: the torch backend serves checkpoints (.pt); use --backend onnxruntime "
            "for .onnx and tensorrt for engines"
        )
    model, meta = load_checkpoint(path)
    info = info_from_meta(name, meta, path)
    return TorchBackend(info, model, meta, device=settings.device, fp16=settings.fp16)


def load_backend(name: str | None, path: Path, settings: Any) -> InferenceBackend:
    """Load ``path`` on ``settings.backend`` (TensorRT falls back to onnxruntime).

    Raises:
        BackendError: the file or backend cannot be used (the message names both).
    """
    if not path.is_file():
        raise BackendError(f"{path}: no such model file")
    if settings.backend == "tensorrt":
        try:
            return _tensorrt(name, path, settings)
        except BackendError as error:
            if path.suffix in _ENGINE_SUFFIXES:
                raise
            log.warning("TensorRT unusable for %s (%s); falling back to onnxruntime", path, error)
            return _onnxruntime(name, path, settings)
    if settings.backend == "onnxruntime":
        return _onnxruntime(name, path, settings)
    return _torch(name, path, settings)
