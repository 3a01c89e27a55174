"""A served model: one loaded backend with its pipeline and its work queue, and how one is
built from a model file (load, warm up, measure, queue). ``registry`` holds the name table."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from prometheus_client import Histogram

from ccnet.inference.backends import InferenceBackend, ModelInfo, load_backend
from ccnet.inference.metadata import name_key
from ccnet.inference.precision.select import precision_entry
from ccnet.inference.segmenter import ClipSegmentation, ClipSegmenter, Segmenter
from ccnet.model.files import write_json_atomic
from ccnet.service.batching import BoundedExecutor, MicroBatcher
from ccnet.service.core.config import Settings
from ccnet.service.core.deadline import Deadline
from ccnet.service.core.memory import peak_growth_bytes
from ccnet.service.metrics import ServiceMetrics
from ccnet.service.reload import ModelVersion
from ccnet.service.stats import InferenceStatistics

__all__ = [
    "DuplicateModelError",
    "ModelBuilder",
    "ModelLoadError",
    "ServedImageModel",
    "ServedModel",
    "ServedVideoModel",
]

log = logging.getLogger("ccnet.service.models")


class DuplicateModelError(ValueError):
    """Two configured models have the same name (the message holds names, never paths);
    ``name`` is the name, so the caller can say how to resolve it for its kind of source."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"two models are named {name!r}")
        self.name = name


class ModelLoadError(RuntimeError):
    """A configured model could not be loaded; ``model`` names it (the cause holds details,
    such as its path, that belong in the log only)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"the model {model!r} failed to load")
        self.model = model


@dataclass
class ServedModel:
    """One loaded model and its backend; the subclass says how its requests are queued."""

    kind: ClassVar[str]
    info: ModelInfo
    backend: InferenceBackend
    version: ModelVersion | None = field(default=None, kw_only=True)
    # requests holding this model (``acquire``/``release``); a retired model closes at 0
    _leases: int = field(default=0, init=False, repr=False)
    _retired: bool = field(default=False, init=False, repr=False)
    _lease_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def depth(self) -> int:
        """Requests waiting for this model."""
        raise NotImplementedError

    def acquire(self) -> bool:
        """Take a lease for one request; False once the model is retired."""
        with self._lease_lock:
            if self._retired:
                return False
            self._leases += 1
            return True

    def release(self) -> None:
        """Give a lease back; the last one of a retired model closes it."""
        with self._lease_lock:
            self._leases -= 1
            last = self._retired and self._leases == 0
        if last:
            self._close_later()

    def retire(self) -> None:
        """No new requests; close (in the background) when the ones in flight are done."""
        with self._lease_lock:
            if self._retired:
                return
            self._retired = True
            idle = self._leases == 0
        if idle:
            self._close_later()

    def _close_later(self) -> None:
        # never on a request's thread or the event loop: closing joins the queue's workers
        threading.Thread(target=self._close_logged, name=f"retire-{self.info.name}").start()

    def _close_logged(self) -> None:
        try:
            self.close()
        except Exception:
            log.exception("closing the retired %s failed", self.info.name)
        else:
            log.info("retired the previous version of %s", self.info.name)

    def close(self) -> None:
        """Stop the queue's workers and release the backend."""
        self.backend.close()

    def describe(self, default: bool) -> dict[str, object]:
        """The /v1/models entry."""
        return {
            "name": self.info.name,
            "version": self.version.describe() if self.version is not None else None,
            "kind": self.info.kind,
            "backend": self.backend.name,
            "device": self.backend.device,
            "default": default,
            "window": self.info.window,
            "precision": precision_entry(self.backend),
            "training": self.info.extra.get("training"),
            "classes": [
                {"id": i, "name": name, "color": list(self.info.palette[i])}
                for i, name in enumerate(self.info.classes)
            ],
        }


@dataclass
class ServedImageModel(ServedModel):
    """An image model: concurrent requests are micro-batched by ``batcher``."""

    kind: ClassVar[str] = "image"
    batcher: MicroBatcher
    # the pipeline (scale, pad, map back), built once per served model, not per request
    segmenter: Segmenter
    # resident bytes a forward pass adds per input pixel (measured at warm-up; 0 off the CPU)
    activation_per_pixel: float = 0.0
    # what the batcher records for /v2/models/NAME/stats (the batcher writes, routes read)
    statistics: InferenceStatistics = field(default_factory=InferenceStatistics)

    @property
    def depth(self) -> int:
        return self.batcher.depth

    def close(self) -> None:
        self.batcher.close()
        super().close()


@dataclass
class ServedVideoModel(ServedModel):
    """A clip model: clips run one at a time on ``clips``, with a bounded backlog."""

    kind: ClassVar[str] = "video"
    clips: BoundedExecutor
    # the clip pipeline (windows, stitching), built once per served model
    segmenter: ClipSegmenter
    # inference seconds of whole clips (``ccnet_inference_seconds``)
    timer: Histogram
    # resident bytes a forward pass adds per input voxel (measured at warm-up; 0 off the CPU)
    activation_per_pixel: float = 0.0

    @property
    def depth(self) -> int:
        return self.clips.depth

    def submit_clip(
        self, frames: np.ndarray, deadline: Deadline, *, claimed: bool = False
    ) -> Future[ClipSegmentation]:
        """Queue one clip's segmentation. The deadline is checked where the work runs: when
        a worker takes the job and before every window, so a clip whose request has timed
        out stops at its next window instead of running to the end."""

        def run() -> ClipSegmentation:
            with self.timer.time():
                return self.segmenter.segment(frames, before_window=deadline.check)

        return self.clips.submit(run, deadline, claimed=claimed)

    def close(self) -> None:
        self.clips.close()
        super().close()


class ModelBuilder:
    """Builds served models from files with the service's settings and metrics."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics

    def build(
        self, name: str | None, path: Path, version: ModelVersion, *, taken: Collection[str]
    ) -> ServedModel:
        """One model file loaded, warmed up and given its queue, not yet served.

        Raises:
            ModelLoadError: the file cannot be loaded or warmed up (the cause says why).
            DuplicateModelError: its name is in ``taken``.
        """
        workers, _ = self.settings.parallelism()
        began = time.perf_counter()
        try:
            backend = load_backend(name, path, self.settings.load_options())
        except Exception as error:
            raise ModelLoadError(name or path.stem) from error
        info = backend.info
        # unique by a safe rule: names differing only in case are one name (URLs, logs and
        # folders on case-insensitive file systems would confuse them)
        if name_key(info.name) in {name_key(other) for other in taken}:
            backend.close()
            raise DuplicateModelError(info.name)
        try:
            self._warm_up(backend)
            activation = self._activation_per_pixel(backend, version)
        except Exception as error:
            backend.close()
            raise ModelLoadError(info.name) from error
        served: ServedModel
        if info.kind == "image":
            statistics = InferenceStatistics()
            batcher = MicroBatcher(
                self._timed(backend),
                max_batch_size=self.settings.max_batch_size,
                max_wait_ms=self.settings.max_batch_wait_ms,
                queue_size=self.settings.queue_size,
                on_batch=lambda size, _, name=info.name: self.metrics.batch_size.labels(
                    name
                ).observe(size),
                statistics=statistics,
                name=info.name,
                workers=workers if backend.thread_safe else 1,
            )
            segmenter = Segmenter(backend, max_side=self.settings.max_side)
            served = ServedImageModel(
                info, backend, batcher, segmenter, activation, statistics, version=version
            )
            if backend.thread_policy is not None:  # a lone request may take every core
                backend.thread_policy.bind_backlog(lambda batcher=batcher: batcher.depth)
        else:
            clips = BoundedExecutor(self.settings.video_queue_size, name=info.name)
            clip_segmenter = ClipSegmenter(
                backend, max_side=self.settings.max_video_side, overlap=self.settings.video_overlap
            )
            timer = self.metrics.inference.labels(backend.name, info.name)
            served = ServedVideoModel(
                info, backend, clips, clip_segmenter, timer, activation, version=version
            )
        self.metrics.record_precision(backend)
        log.info(
            "loaded %s (%s) on %s/%s from %s (sha256 %s) in %.1f s; %.0f B of activations "
            "per pixel",
            info.name,
            info.kind,
            backend.name,
            backend.device,
            path,
            version.sha256[:12],
            time.perf_counter() - began,
            activation,
            extra={"model": info.name, "backend": backend.name},
        )
        return served

    def _timed(self, backend: InferenceBackend):
        histogram = self.metrics.inference.labels(backend.name, backend.info.name)

        def run(batch: np.ndarray) -> np.ndarray:
            with histogram.time():
                return backend.infer(batch)

        return run

    def _warm_up(self, backend: InferenceBackend) -> None:
        """One small forward pass, so the first request does not pay for lazy set-up."""
        info = backend.info
        shape = (1, 3, info.window or 1, 64, 64) if info.kind == "video" else (1, 3, 64, 64)
        backend.infer(np.full(shape, 127.0, dtype=np.float32))

    def _activation_per_pixel(self, backend: InferenceBackend, version: ModelVersion) -> float:
        """Resident bytes one forward pass adds per input pixel, measured on a 256×256 input
        (a window of 128×128 frames for clips): the memory budget charges every request for
        its own share of the batch it runs in (``service.costs``).

        The figure must not depend on what the process did before (a hot reload into a warm
        server measured 0): the measurement starts from a trimmed heap (``peak_growth_bytes``),
        and the largest figure ever measured for this file's content on this backend and
        precision is kept in ``CACHE_DIR/activation/`` and used from then on. A first start
        measures what a cold process needs (lazily built kernels and their scratch space
        included), and a later, warmer measurement can only raise it."""
        info = backend.info
        side = 128 if info.kind == "video" else 256
        frames = info.window or 1
        shape = (1, 3, frames, side, side) if info.kind == "video" else (1, 3, side, side)
        batch = np.full(shape, 127.0, dtype=np.float32)
        grown = peak_growth_bytes(lambda: backend.infer(batch))
        measured = 0.0 if grown is None else grown / (frames * side * side)
        precision = precision_entry(backend).get("chosen", "fp32")
        record = (
            self.settings.cache_dir
            / "activation"
            / (f"{version.sha256}-{backend.name}-{backend.device}-{precision}.json")
        )
        try:
            kept = float(json.loads(record.read_text())["bytes_per_pixel"])
        except (OSError, ValueError, KeyError, TypeError):
            kept = 0.0
        if measured > kept:
            try:
                write_json_atomic(record, {"bytes_per_pixel": measured})
            except OSError as error:  # a read-only cache: the figure of this start serves
                log.warning("cannot keep the activation figure in %s: %s", record, error)
        return max(measured, kept)
