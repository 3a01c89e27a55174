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

from ccnet.export.runtime.artifacts import NotPreparedError, ServeLimits, prepared_onnx
from ccnet.export.runtime.formats import ENGINE_SUFFIXES
from ccnet.inference.backends.base import BackendError, InferenceBackend, ModelInfo, info_from_meta
from ccnet.inference.backends.quantize import cached_int8
from ccnet.inference.options import DEFAULT_CLIP_WINDOW, LoadOptions
from ccnet.inference.precision.select import configure_backend

__all__ = ["load_backend"]

log = logging.getLogger("ccnet.inference.models")


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


def _prepared_onnx(path: Path, options: LoadOptions) -> Path:
    """``path`` itself for an export; a checkpoint's prepared export from the cache."""
    if path.suffix != ".pt":
        return path
    try:
        return prepared_onnx(path, options.cache_dir)
    except NotPreparedError as error:
        raise BackendError(str(error)) from None


def _tensorrt(name: str | None, path: Path, options: LoadOptions) -> InferenceBackend:
    from ccnet.export.runtime.artifacts import engine_key, prepared_engine
    from ccnet.export.runtime.availability import require_tensorrt
    from ccnet.export.runtime.plugins import resolve_plugin
    from ccnet.export.runtime.sidecar import read_engine_sidecar, read_sidecar
    from ccnet.inference.backends.tensorrt_backend import TensorRTBackend

    try:
        trt = require_tensorrt()
        plugin = resolve_plugin(options.trt_plugin)
        if path.suffix not in ENGINE_SUFFIXES:
            onnx_path = _prepared_onnx(path, options)
            sidecar = read_sidecar(onnx_path)
            name = name or _info_from_sidecar(None, sidecar, onnx_path).name
            limits = ServeLimits.from_settings(options)
            key = engine_key(sidecar, limits, tensorrt_version=trt.__version__, plugin=plugin)
            path = prepared_engine(onnx_path, options.cache_dir, key)
        sidecar = read_engine_sidecar(path)
    except (OSError, ValueError) as error:
        raise BackendError(str(error)) from error
    info = _info_from_sidecar(name, sidecar, path)
    return TensorRTBackend(info, path, plugin=plugin, sidecar=sidecar)


def _onnxruntime(name: str | None, path: Path, options: LoadOptions) -> InferenceBackend:
    from ccnet.export.runtime.sidecar import read_sidecar
    from ccnet.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

    if path.suffix in ENGINE_SUFFIXES:
        raise BackendError(f"{path}: a TensorRT engine runs on the tensorrt backend only")
    path = _prepared_onnx(path, options)
    try:
        sidecar = read_sidecar(path)
    except (OSError, ValueError) as error:
        raise BackendError(f"{path}: {error}") from error
    if sidecar.get("interface") == "image":
        raise BackendError(
            f"{path}: a Triton model with the image interface (UINT8 images in, masks out, "
            "written by ccnet export triton); the service runs the network's own export "
            "(ccnet export onnx), which it wraps"
        )
    if sidecar.get("output", "logits") != "logits":
        raise BackendError(
            f"{path}: exported with --output {sidecar['output']}; the service needs the logits "
            "export (ccnet export onnx without --output)"
        )
    info = _info_from_sidecar(name, sidecar, path)
    _, threads = options.parallelism("onnxruntime")
    int8 = functools.partial(
        cached_int8,
        path,
        options.cache_dir,
        info.kind,
        sidecar,
        frames=info.window or DEFAULT_CLIP_WINDOW,
    )
    backend = OnnxRuntimeBackend(info, path, device=options.device, threads=threads, int8=int8)
    return configure_backend(backend, options, path, sidecar)


def _torch(name: str | None, path: Path, options: LoadOptions) -> InferenceBackend:
    from ccnet.inference.backends.torch_backend import TorchBackend
    from ccnet.model import load_checkpoint

    if path.suffix != ".pt":
        raise BackendError(
            f"{path}: the torch backend serves checkpoints (.pt); use --backend onnxruntime "
            "for .onnx and tensorrt for engines"
        )
    model, meta = load_checkpoint(path)
    info = info_from_meta(name, meta, path)
    backend = TorchBackend(info, model, meta, device=options.device, fp16=options.fp16)
    return configure_backend(backend, options, path, meta)


def load_backend(
    name: str | None, path: Path, options: LoadOptions | None = None
) -> InferenceBackend:
    """Load ``path`` on ``options.backend`` if it was set, else on the file's own backend
    (TensorRT falls back to onnxruntime). Nothing is exported or built here: a checkpoint on
    onnxruntime or tensorrt needs its artifact prepared first (``ccnet.inference.facade``).

    Raises:
        BackendError: the file or backend cannot be used (the message names both).
    """
    if not path.is_file():
        raise BackendError(f"{path}: no such model file")
    options = options or LoadOptions()
    backend = options.backend_for(path)
    if backend == "tensorrt":
        try:
            return _tensorrt(name, path, options)
        except BackendError as error:
            if path.suffix in ENGINE_SUFFIXES:
                raise
            log.warning("TensorRT unusable for %s (%s); falling back to onnxruntime", path, error)
            return _onnxruntime(name, path, options)
    if backend == "onnxruntime":
        return _onnxruntime(name, path, options)
    return _torch(name, path, options)
