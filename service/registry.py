"""The models a running service holds, each with its backend and its work queue.

Models are loaded once at start, by name, from the files the operator configured; a request
can only pick one of these names, never a path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np

from .backends import InferenceBackend, ModelInfo, load_backend
from .backends.precision import precision_entry, record_precision_metrics
from .batching import BoundedExecutor, MicroBatcher
from .core.config import Settings
from .core.memory import peak_growth_bytes
from .metrics import ServiceMetrics

__all__ = [
    "DuplicateModelError",
    "ModelLoadError",
    "ModelRegistry",
    "ServedImageModel",
    "ServedModel",
    "ServedVideoModel",
    "UnknownModelError",
]

log = logging.getLogger("ccnet.service.models")


class UnknownModelError(LookupError):
    """No loaded model has that name, or it is of the other kind."""


class DuplicateModelError(ValueError):
    """Two configured models have the same name (the message holds names, never paths)."""


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

    @property
    def depth(self) -> int:
        """Requests waiting for this model."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the queue's workers and release the backend."""
        self.backend.close()

    def describe(self, default: bool) -> dict[str, object]:
        """The /v1/models entry."""
        return {
            "name": self.info.name,
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
    # resident bytes a forward pass adds per input pixel (measured at warm-up; 0 off the CPU)
    activation_per_pixel: float = 0.0

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
    # resident bytes a forward pass adds per input voxel (measured at warm-up; 0 off the CPU)
    activation_per_pixel: float = 0.0

    @property
    def depth(self) -> int:
        return self.clips.depth

    def close(self) -> None:
        self.clips.close()
        super().close()


Served = TypeVar("Served", ServedImageModel, ServedVideoModel)


class ModelRegistry:
    """Loads, warms up, serves and closes the configured models."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.defaults: dict[str, str] = {}

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self.models.values())

    def load(self) -> None:
        """Load every configured model and warm it up.

        Raises:
            ModelLoadError: a model cannot be loaded (its cause names the file).
            DuplicateModelError: two models share a name.
        """
        workers, threads = self.settings.parallelism()
        if self.settings.backend == "torch":
            import torch

            torch.set_num_threads(threads)
        log.info("%d inference worker(s) per image model, %d thread(s) each", workers, threads)
        for name, path in self.settings.model_sources():
            began = time.perf_counter()
            try:
                backend = load_backend(name, path, self.settings)
            except Exception as error:
                raise ModelLoadError(name or path.stem) from error
            info = backend.info
            if info.name in self.models:
                backend.close()
                raise DuplicateModelError(f"two models are named {info.name!r}; name one NAME=PATH")
            try:
                self._warm_up(backend)
                activation = self._activation_per_pixel(backend)
            except Exception as error:
                backend.close()
                raise ModelLoadError(info.name) from error
            served: ServedModel
            if info.kind == "image":
                batcher = MicroBatcher(
                    self._timed(backend),
                    max_batch_size=self.settings.max_batch_size,
                    max_wait_ms=self.settings.max_batch_wait_ms,
                    queue_size=self.settings.queue_size,
                    on_batch=lambda size, _, name=info.name: self.metrics.batch_size.labels(
                        name
                    ).observe(size),
                    name=info.name,
                    workers=workers if backend.thread_safe else 1,
                )
                served = ServedImageModel(info, backend, batcher, activation)
                if backend.thread_policy is not None:  # a lone request may take every core
                    backend.thread_policy.bind_backlog(lambda batcher=batcher: batcher.depth)
            else:
                clips = BoundedExecutor(self.settings.video_queue_size, name=info.name)
                served = ServedVideoModel(info, backend, clips, activation)
            self.models[info.name] = served
            record_precision_metrics(self.metrics, backend)
            self.defaults.setdefault(info.kind, info.name)
            log.info(
                "loaded %s (%s) on %s/%s from %s in %.1f s; %.0f B of activations per pixel",
                info.name,
                info.kind,
                backend.name,
                backend.device,
                path,
                time.perf_counter() - began,
                activation,
                extra={"model": info.name, "backend": backend.name},
            )

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

    def _activation_per_pixel(self, backend: InferenceBackend) -> float:
        """Resident bytes one forward pass adds per input pixel, measured on a 256×256 input
        (a window of 128×128 frames for clips): the memory budget charges every request for
        its own share of the batch it runs in (``service.costs``)."""
        info = backend.info
        side = 128 if info.kind == "video" else 256
        frames = info.window or 1
        shape = (1, 3, frames, side, side) if info.kind == "video" else (1, 3, side, side)
        batch = np.full(shape, 127.0, dtype=np.float32)
        grown = peak_growth_bytes(lambda: backend.infer(batch))
        return 0.0 if grown is None else grown / (frames * side * side)

    def get(self, name: str | None, kind: type[Served]) -> Served:
        """The model called ``name`` (or the default of its kind), checked to be a ``kind``
        (``ServedImageModel`` or ``ServedVideoModel``)."""
        wanted = kind.kind
        if name is None:
            if wanted not in self.defaults:
                raise UnknownModelError(f"no {wanted} model is loaded")
            name = self.defaults[wanted]
        served = self.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise UnknownModelError(f"no model named {name!r} is loaded (loaded: {known})")
        if not isinstance(served, kind):
            raise UnknownModelError(
                f"model {name!r} segments {served.info.kind}s; this endpoint needs a {wanted} model"
            )
        return served

    def update_gauges(self) -> None:
        """Refresh the queue-depth gauges (called when /metrics is scraped)."""
        for served in self:
            self.metrics.queue_depth.labels(served.info.name).set(served.depth)

    def close(self) -> None:
        """Stop the workers and release the backends."""
        for served in self:
            served.close()
        self.models.clear()
