"""The prepare step of ``ccnet serve``: every model file to the artifact its backend runs.

Run once, in the parent process, before uvicorn starts its workers (as Triton serves a model
repository built offline): a checkpoint is exported to ONNX and parity-checked for
onnxruntime; for tensorrt that ONNX (or a given one) is built into an engine with the plugin,
checked against ONNX Runtime. Artifacts go to the cache under the keys of
``export.runtime.artifacts``, where the workers look them up; they never export or build.

Where TensorRT cannot be used (no library, GPU or plugin, or the build fails its check), the
ONNX export is prepared instead and the workers fall back to onnxruntime, so one GPU image
serves on any machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ccnet.export._progress import Progress, silent
from ccnet.export.runtime.artifacts import (
    SERVE_EXPORT,
    ServeLimits,
    engine_artifact,
    engine_key,
    onnx_artifact,
)
from ccnet.export.runtime.availability import require_tensorrt
from ccnet.export.runtime.formats import BACKENDS, ENGINE_SUFFIXES
from ccnet.export.runtime.plugins import load_plugin, resolve_plugin
from ccnet.export.runtime.sidecar import read_engine_sidecar, read_sidecar

__all__ = ["prepare_artifact", "prepare_served"]

log = logging.getLogger("ccnet.prepare")


def _is_valid(check: Callable[[Path], Any], path: Path) -> bool:
    try:
        check(path)
    except (OSError, ValueError):
        return False
    return True


def _onnx(source: Path, cache_dir: Path, say: Progress) -> Path:
    """``source`` itself when it is an export, else its cached export (made if missing)."""
    if source.suffix == ".onnx":
        read_sidecar(source)  # a pair that does not match is refused here, not in a worker
        return source
    target = onnx_artifact(source, cache_dir)
    if _is_valid(read_sidecar, target):
        say(f"{source}: cached ONNX export {target}")
        return target
    from ccnet.export.onnx import export_onnx

    options = {k: v for k, v in SERVE_EXPORT.items() if k != "revision"}
    say(f"{source}: exporting to ONNX in {target.parent} (once; cached)")
    return export_onnx(source, target.parent, progress=say, **options).model_path


def _engine(
    onnx_path: Path, cache_dir: Path, limits: ServeLimits, plugin: Path | None, say: Progress
) -> Path:
    """The cached engine of ``onnx_path`` for this TensorRT, plugin build and GPU."""
    trt = require_tensorrt()
    sidecar = read_sidecar(onnx_path)
    if plugin is not None:  # once per process: the build below finds it loaded
        load_plugin(plugin, runtime=trt, required=sidecar["custom_ops"])
    key = engine_key(sidecar, limits, tensorrt_version=trt.__version__, plugin=plugin)
    target = engine_artifact(onnx_path, cache_dir, key)
    if _is_valid(read_engine_sidecar, target):
        say(f"{onnx_path}: cached TensorRT engine {target}")
        return target
    from ccnet.export.engine import ShapeProfile, build_engine

    say(f"{onnx_path}: building a TensorRT engine in {target.parent} (once; cached)")
    build_engine(onnx_path, target, ShapeProfile(*key.profile), plugin=plugin, progress=say)
    return target


def prepare_artifact(
    source: str | Path,
    backend: str,
    cache_dir: str | Path,
    *,
    limits: ServeLimits,
    plugin: str | Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """The file ``backend`` runs for ``source``, exported or built into the cache if needed.

    Args:
        source: a checkpoint (``.pt``), an ONNX export or an engine (``.engine``/``.plan``).
        backend: "torch", "onnxruntime" or "tensorrt".
        cache_dir: where exports and engines are cached.
        limits: the service limits the engine's optimisation profile is sized from.
        plugin: the plugin library (``export.runtime.plugins.resolve_plugin`` fallbacks).
        progress: receives progress lines.

    Returns:
        ``source`` (torch, or a file the backend runs as is), the cached ONNX, or the cached
        engine; for tensorrt the ONNX when TensorRT is unusable here (logged as a warning).

    Raises:
        FileNotFoundError: ``source`` is missing.
        ValueError: a pairing the backend cannot run, an export whose sidecar does not match,
            or an export that fails its parity check.
    """
    say = progress or silent
    path, cache = Path(source), Path(cache_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    engine = path.suffix in ENGINE_SUFFIXES
    if backend == "torch":
        return path
    if backend == "onnxruntime":
        if engine:
            raise ValueError(f"{path}: a TensorRT engine runs on the tensorrt backend only")
        return _onnx(path, cache, say)
    if engine:
        read_engine_sidecar(path)
        return path
    onnx_path = _onnx(path, cache, say)
    try:
        library = resolve_plugin(plugin)
        return _engine(onnx_path, cache, limits, library, say)
    except (ImportError, FileNotFoundError, ValueError) as error:
        message = f"{path}: TensorRT unusable ({error}); prepared {onnx_path} for onnxruntime"
        if progress is None:
            log.warning("%s", message)
        else:
            say(message)
        return onnx_path


def prepare_served(
    source: str | Path, backend: str, settings: Any, *, progress: Progress | None = None
) -> Path:
    """``prepare_artifact`` with the cache, limits and plugin of the service's ``settings``
    (``service.core.config.Settings``: ``cache_dir``, ``trt_plugin``, ``max_side``,
    ``max_video_side``, ``max_batch_size``), so every caller prepares what the loader of a
    service with those settings looks up."""
    return prepare_artifact(
        source,
        backend,
        settings.cache_dir,
        limits=ServeLimits.from_settings(settings),
        plugin=settings.trt_plugin,
        progress=progress,
    )
