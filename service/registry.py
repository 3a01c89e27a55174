"""The models a running service holds, each with its backend and its work queue.

Models are loaded at start, by name, from the files the operator configured; a request can
only pick one of these names, never a path. With a models folder, ``service.reload`` replaces,
adds and removes models while the service runs: a new version is built and warmed up beside
the old one, swapped in by name in one step, and the old one is closed once the last request
holding it (a lease, taken by the model dependencies) has finished.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np

from ccnet.inference.backends import InferenceBackend, ModelInfo, load_backend
from ccnet.inference.precision.select import precision_entry
from ccnet.model.files import file_sha256
from ccnet.service.batching import BoundedExecutor, MicroBatcher
from ccnet.service.core.config import Settings
from ccnet.service.core.memory import peak_growth_bytes
from ccnet.service.metrics import ServiceMetrics
from ccnet.service.reload import LoadFailure, ModelVersion

__all__ = [
    "DuplicateModelError",
    "ModelLoadError",
    "ModelRegistry",
    "Preparer",
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
Preparer = Callable[[Path, Settings], None]  # (model file, settings): export/build


class ModelRegistry:
    """Loads, warms up, serves and closes the configured models."""

    def __init__(
        self, settings: Settings, metrics: ServiceMetrics, preparer: Preparer | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        # makes what a backend runs for a file before a reload loads it (``ccnet serve``)
        self.preparer = preparer
        self.models: dict[str, ServedModel] = {}
        self.defaults: dict[str, str] = {}
        self.failures: dict[str, LoadFailure] = {}  # folder files that did not (re)load
        self._lock = threading.Lock()  # lookups against swaps

    def __iter__(self) -> Iterator[ServedModel]:
        with self._lock:
            return iter(list(self.models.values()))

    def lease(self, pick: Callable[[], Served]) -> Served:
        """``pick()`` (a lookup raising on unknown names) with a lease taken on its result, in
        one step against swaps; the caller must ``release()`` it."""
        with self._lock:
            served = pick()
            served.acquire()  # never refused: a model leaves the dict (here) before retiring
            return served

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
            try:
                version = ModelVersion(path, file_sha256(path), time.time())
            except OSError as error:
                raise ModelLoadError(name or path.stem) from error
            served = self._build(name, path, version, taken=self.models)
            with self._lock:
                self.models[served.info.name] = served
                self.defaults.setdefault(served.info.kind, served.info.name)

    def _build(
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
        if info.name in taken:
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
            served = ServedImageModel(info, backend, batcher, activation, version=version)
            if backend.thread_policy is not None:  # a lone request may take every core
                backend.thread_policy.bind_backlog(lambda batcher=batcher: batcher.depth)
        else:
            clips = BoundedExecutor(self.settings.video_queue_size, name=info.name)
            served = ServedVideoModel(info, backend, clips, activation, version=version)
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

    # ------------------------------------------------------------------ hot reload (ReloadTarget)

    def replace_from_file(self, path: Path, version: ModelVersion, previous: str | None) -> str:
        """Prepare, build and warm up the model in ``path`` on this (background) thread while
        ``previous`` keeps serving, then swap it in by name in one step. The replaced model
        is retired: requests holding it finish on it, then it is closed.

        Raises:
            Exception: preparing or loading failed (``ModelLoadError``, or the preparer's
                error); nothing that serves is touched.
        """
        if self.preparer is not None:
            self.preparer(path, self.settings)
        with self._lock:
            taken = set(self.models) - {previous}
        served = self._build(None, path, version, taken=taken)
        name = served.info.name
        with self._lock:
            if name in self.models and name != previous:  # taken meanwhile (another file)
                raced = True
            else:
                raced = False
                replaced = [self.models.pop(n) for n in {previous, name} if n in self.models]
                self.models[name] = served
                self._repair_defaults({previous: name} if previous else {})
        if raced:
            served.close()
            raise DuplicateModelError(f"two models are named {name!r}")
        for old in replaced:
            old.retire()
        return name

    def unload(self, name: str) -> None:
        """Stop serving ``name``; its requests in flight finish first."""
        with self._lock:
            served = self.models.pop(name, None)
            self._repair_defaults({})
        if served is not None:
            served.retire()

    def _repair_defaults(self, renamed: dict[str | None, str]) -> None:
        """Keep one default per kind that is loaded (caller holds the lock): a renamed model
        keeps its default role, a removed default passes to the first model of its kind."""
        for kind, name in list(self.defaults.items()):
            name = renamed.get(name, name)
            served = self.models.get(name)
            if served is None or served.info.kind != kind:
                name = next((s.info.name for s in self.models.values() if s.info.kind == kind), "")
            if name:
                self.defaults[kind] = name
            else:
                del self.defaults[kind]
        for served in self.models.values():
            self.defaults.setdefault(served.info.kind, served.info.name)

    def record_failure(self, failure: LoadFailure | None, file: str) -> None:
        """Keep (or, with None, forget) the last load failure of a folder file (/v1/models)."""
        with self._lock:
            if failure is None:
                self.failures.pop(file, None)
            else:
                self.failures[file] = failure

    def served_files(self, directory: Path) -> Iterable[tuple[Path, str, ModelVersion]]:
        """(path, model name, version) of the models loaded from ``directory``: the watcher
        starts from these, so nothing loaded at start is loaded again."""
        with self._lock:
            served = list(self.models.values())
        root = directory.resolve()
        return [
            (s.version.path, s.info.name, s.version)
            for s in served
            if s.version is not None and s.version.path.resolve().parent == root
        ]

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
        with self._lock:
            self.models.clear()
