"""The models a running service holds, each with its backend and its work queue.

Models are loaded once at start, by name, from the files the operator configured; a request
can only pick one of these names, never a path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .backends import InferenceBackend, ModelInfo, load_backend
from .batching import BoundedExecutor, MicroBatcher
from .core.config import Settings
from .metrics import ServiceMetrics

__all__ = ["ModelRegistry", "ServedModel", "UnknownModelError"]

log = logging.getLogger("ccnet.service.models")


class UnknownModelError(LookupError):
    """No loaded model has that name, or it is of the other kind."""


@dataclass
class ServedModel:
    """One loaded model: images go through ``batcher``, clips through ``clips``."""

    info: ModelInfo
    backend: InferenceBackend
    batcher: MicroBatcher | None = None
    clips: BoundedExecutor | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for this model."""
        runner = self.batcher or self.clips
        return runner.depth if runner is not None else 0

    def describe(self, default: bool) -> dict[str, object]:
        """The /v1/models entry."""
        return {
            "name": self.info.name,
            "kind": self.info.kind,
            "backend": self.backend.name,
            "device": self.backend.device,
            "default": default,
            "window": self.info.window,
            "classes": [
                {"id": i, "name": name, "color": list(self.info.palette[i])}
                for i, name in enumerate(self.info.classes)
            ],
        }


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
            BackendError: a model cannot be loaded (the message names the file).
            ValueError: two models share a name.
        """
        workers, threads = self.settings.parallelism()
        if self.settings.backend == "torch":
            import torch

            torch.set_num_threads(threads)
        log.info("%d inference worker(s) per image model, %d thread(s) each", workers, threads)
        for name, path in self.settings.model_sources():
            began = time.perf_counter()
            backend = load_backend(name, path, self.settings)
            info = backend.info
            if info.name in self.models:
                raise ValueError(f"two models are named {info.name!r}; name one NAME=PATH")
            served = ServedModel(info, backend)
            self._warm_up(served)
            if info.kind == "image":
                served.batcher = MicroBatcher(
                    self._timed(served),
                    max_batch_size=self.settings.max_batch_size,
                    max_wait_ms=self.settings.max_batch_wait_ms,
                    queue_size=self.settings.queue_size,
                    on_batch=lambda size, _, name=info.name: self.metrics.batch_size.labels(
                        name
                    ).observe(size),
                    name=info.name,
                    workers=workers if backend.thread_safe else 1,
                )
            else:
                served.clips = BoundedExecutor(self.settings.video_queue_size, name=info.name)
            self.models[info.name] = served
            self.defaults.setdefault(info.kind, info.name)
            log.info(
                "loaded %s (%s) on %s/%s from %s in %.1f s",
                info.name,
                info.kind,
                backend.name,
                backend.device,
                path,
                time.perf_counter() - began,
                extra={"model": info.name, "backend": backend.name},
            )

    def _timed(self, served: ServedModel):
        histogram = self.metrics.inference.labels(served.backend.name, served.info.name)

        def run(batch: np.ndarray) -> np.ndarray:
            with histogram.time():
                return served.backend.infer(batch)

        return run

    def _warm_up(self, served: ServedModel) -> None:
        """One small forward pass, so the first request does not pay for lazy set-up."""
        shape = (
            (1, 3, served.info.window or 1, 64, 64)
            if served.info.kind == "video"
            else (1, 3, 64, 64)
        )
        served.backend.infer(np.full(shape, 127.0, dtype=np.float32))

    def get(self, name: str | None, kind: str) -> ServedModel:
        """The model called ``name`` (or the default of ``kind``), checked to be of ``kind``."""
        if name is None:
            if kind not in self.defaults:
                raise UnknownModelError(f"no {kind} model is loaded")
            name = self.defaults[kind]
        served = self.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise UnknownModelError(f"no model named {name!r} is loaded (loaded: {known})")
        if served.info.kind != kind:
            raise UnknownModelError(
                f"model {name!r} segments {served.info.kind}s; this endpoint needs a {kind} model"
            )
        return served

    def update_gauges(self) -> None:
        """Refresh the queue-depth gauges (called when /metrics is scraped)."""
        for served in self:
            self.metrics.queue_depth.labels(served.info.name).set(served.depth)

    def close(self) -> None:
        """Stop the workers and release the backends."""
        for served in self:
            for runner in (served.batcher, served.clips):
                if runner is not None:
                    runner.close()
            served.backend.close()
        self.models.clear()
