"""From a model file and a backend name to a ready ``InferenceBackend``: loading only.

A checkpoint (``.pt``) runs on any backend, an ``.onnx`` export on onnxruntime or tensorrt, an
engine (``.engine``/``.plan``) only on tensorrt. What a backend runs for a checkpoint (its ONNX
export) or for an export (its engine) is made beforehand by the prepare step
(``export.prepare.prepare_artifact``, run by ``ccnet serve`` in its parent process before the
workers start); here it is only looked up in the cache (``export.runtime.artifacts``), so no
worker ever exports or builds. When TensorRT cannot be used here (no library, GPU, plugin or
prepared engine) the loader falls back to onnxruntime and says so in the log, so one GPU image
serves on any machine.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

from export.runtime.artifacts import NotPreparedError, ServeLimits, prepared_onnx

from ..model_card import training_card
from .base import BackendError, InferenceBackend, ModelInfo
from .precision import configure_backend
from .quantize import cached_int8

__all__ = ["BACKENDS", "backend_for", "effective_backend", "info_from_meta", "load_backend"]

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
        extra={"training": training_card(meta)},  # what it knows: /v1/models, the demo page
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


def _prepared_onnx(path: Path, settings: Any) -> Path:
    """``path`` itself for an export; a checkpoint's prepared export from the cache."""
    if path.suffix != ".pt":
        return path
    try:
        return prepared_onnx(path, settings.cache_dir)
    except NotPreparedError as error:
        raise BackendError(str(error)) from None


def _tensorrt(name: str | None, path: Path, settings: Any) -> InferenceBackend:
    from export.runtime.artifacts import engine_key, prepared_engine
    from export.runtime.availability import require_tensorrt
    from export.runtime.plugins import resolve_plugin
    from export.runtime.sidecar import read_engine_sidecar, read_sidecar

    from .tensorrt_backend import TensorRTBackend

    try:
        trt = require_tensorrt()
        plugin = resolve_plugin(settings.trt_plugin)
        if path.suffix not in _ENGINE_SUFFIXES:
            onnx_path = _prepared_onnx(path, settings)
            sidecar = read_sidecar(onnx_path)
            name = name or _info_from_sidecar(None, sidecar, onnx_path).name
            limits = ServeLimits.from_settings(settings)
            key = engine_key(sidecar, limits, tensorrt_version=trt.__version__, plugin=plugin)
            path = prepared_engine(onnx_path, settings.cache_dir, key)
        sidecar = read_engine_sidecar(path)
    except (OSError, ValueError) as error:
        raise BackendError(str(error)) from error
    info = _info_from_sidecar(name, sidecar, path)
    return TensorRTBackend(info, path, plugin=plugin, sidecar=sidecar)


def _onnxruntime(name: str | None, path: Path, settings: Any) -> InferenceBackend:
    from export.runtime.sidecar import read_sidecar

    from .onnxruntime_backend import OnnxRuntimeBackend

    if path.suffix in _ENGINE_SUFFIXES:
        raise BackendError(f"{path}: a TensorRT engine runs on the tensorrt backend only")
    path = _prepared_onnx(path, settings)
    try:
        sidecar = read_sidecar(path)
    except (OSError, ValueError) as error:
        raise BackendError(f"{path}: {error}") from error
    if sidecar.get("output", "logits") != "logits":
        raise BackendError(
            f"{path}: exported with --output {sidecar['output']}; the service needs the logits "
            "export (ccnet export onnx without --output)"
        )
    info = _info_from_sidecar(name, sidecar, path)
    _, threads = settings.parallelism()
    int8 = functools.partial(
        cached_int8, path, settings.cache_dir, info.kind, sidecar, frames=info.window or 4
    )
    backend = OnnxRuntimeBackend(info, path, device=settings.device, threads=threads, int8=int8)
    return configure_backend(backend, settings, path, sidecar)


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
    backend = TorchBackend(info, model, meta, device=settings.device, fp16=settings.fp16)
    return configure_backend(backend, settings, path, meta)


def backend_for(path: Path) -> str:
    """The backend a model file runs on when none is asked for: ``.onnx`` on onnxruntime,
    ``.engine``/``.plan`` on tensorrt, anything else (checkpoints) on torch."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    return "tensorrt" if suffix in _ENGINE_SUFFIXES else "torch"


def effective_backend(path: Path, settings: Any) -> str:
    """``settings.backend`` if it was set, else ``backend_for(path)`` (the prepare step and
    the loader pick the same one)."""
    explicit = "backend" in getattr(settings, "model_fields_set", {"backend"})
    return settings.backend if explicit else backend_for(path)


def load_backend(name: str | None, path: Path, settings: Any) -> InferenceBackend:
    """Load ``path`` on ``settings.backend`` if it was set, else on ``backend_for(path)``
    (TensorRT falls back to onnxruntime).

    Raises:
        BackendError: the file or backend cannot be used (the message names both).
    """
    if not path.is_file():
        raise BackendError(f"{path}: no such model file")
    backend = effective_backend(path, settings)
    if backend == "tensorrt":
        try:
            return _tensorrt(name, path, settings)
        except BackendError as error:
            if path.suffix in _ENGINE_SUFFIXES:
                raise
            log.warning("TensorRT unusable for %s (%s); falling back to onnxruntime", path, error)
            return _onnxruntime(name, path, settings)
    if backend == "onnxruntime":
        return _onnxruntime(name, path, settings)
    return _torch(name, path, settings)
