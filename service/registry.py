"""The name table of the models a running service holds.

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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from ccnet.model.files import file_sha256
from ccnet.service.core.config import Settings
from ccnet.service.metrics import ServiceMetrics
from ccnet.service.reload import LoadFailure, ModelVersion
from ccnet.service.served import (
    DuplicateModelError,
    ModelBuilder,
    ModelLoadError,
    ServedImageModel,
    ServedModel,
    ServedVideoModel,
)

__all__ = [
    "ModelRegistry",
    "NoModelsError",
    "Preparer",
    "UnknownModelError",
    "WrongModelKindError",
]

log = logging.getLogger("ccnet.service.models")


def _duplicate(name: str, file: str | None) -> DuplicateModelError:
    """The error for a second model called ``name``, saying what resolves it: a models-folder
    ``file`` is named by its stem (rename the file); a ``--model`` takes ``NAME=PATH``."""
    if file is not None:
        return DuplicateModelError(
            name,
            f"{file}: its file name makes it {name!r}, a name another model already has; "
            "rename the file",
        )
    return DuplicateModelError(name, f"two models are named {name!r}; name one NAME=PATH")


class UnknownModelError(LookupError):
    """No loaded model has that name, or it is of the other kind."""


class WrongModelKindError(UnknownModelError):
    """The model exists but segments the other kind of input (a clip model for an image)."""


class NoModelsError(UnknownModelError):
    """No model is loaded at all (an empty models folder): not the request's fault."""


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
        self.builder = ModelBuilder(settings, metrics)
        self.models: dict[str, ServedModel] = {}
        self.defaults: dict[str, str] = {}
        self.failures: dict[str, LoadFailure] = {}  # folder files that did not (re)load
        self._lock = threading.Lock()  # lookups against swaps

    def __iter__(self) -> Iterator[ServedModel]:
        with self._lock:
            return iter(list(self.models.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self.models)

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
        sources = self.settings.model_sources()
        folder = self.settings.model_dir
        for name, path in sources:
            try:
                version = ModelVersion(path, file_sha256(path), time.time())
            except OSError as error:
                raise ModelLoadError(name or path.stem) from error
            try:
                served = self.builder.build(name, path, version, taken=self.models)
            except DuplicateModelError as error:
                in_folder = folder is not None and path.parent == folder
                raise _duplicate(error.name, path.name if in_folder else None) from None
            with self._lock:
                self.models[served.info.name] = served
                self.defaults.setdefault(served.info.kind, served.info.name)
            self.metrics.record_version(served.info.name, served.version, serving=True)
        if not sources:
            log.warning(
                "the models folder is empty: nothing is served (and /readyz answers 503) "
                "until a model file is copied into it"
            )

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
        try:  # a folder file is named by its file's stem, as Triton names a model by its folder
            served = self.builder.build(path.stem, path, version, taken=taken)
        except DuplicateModelError as error:
            raise _duplicate(error.name, path.name) from None
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
            raise _duplicate(name, path.name)
        for old in replaced:
            self.metrics.record_version(old.info.name, old.version, serving=False)
            old.retire()
        self.metrics.record_version(name, version, serving=True)
        return name

    def unload(self, name: str) -> None:
        """Stop serving ``name``; its requests in flight finish first."""
        with self._lock:
            served = self.models.pop(name, None)
            self._repair_defaults({})
        if served is not None:
            self.metrics.record_version(name, served.version, serving=False)
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
        if failure is not None:
            self.metrics.reload_failures.labels(file).inc()

    def served_files(self, directory: Path) -> Iterable[tuple[Path, str, ModelVersion]]:
        """(path, model name, version) of the models loaded from ``directory``: the watcher
        starts from these, so nothing loaded at start is loaded again."""
        with self._lock:
            served = list(self.models.values())
        root = directory.resolve()
        # the file's folder, not a symlink's target's: a linked model is still the folder's
        return [
            (s.version.path, s.info.name, s.version)
            for s in served
            if s.version is not None and s.version.path.absolute().parent.resolve() == root
        ]

    def get(self, name: str | None, kind: type[Served]) -> Served:
        """The model called ``name`` (or the default of its kind), checked to be a ``kind``
        (``ServedImageModel`` or ``ServedVideoModel``)."""
        wanted = kind.kind
        if not self.models:
            raise NoModelsError("no model is loaded")
        if name is None:
            if wanted not in self.defaults:
                raise UnknownModelError(f"no {wanted} model is loaded")
            name = self.defaults[wanted]
        served = self.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise UnknownModelError(f"no model named {name!r} is loaded (loaded: {known})")
        if not isinstance(served, kind):
            endpoint = "/v1/segment/video" if served.info.kind == "video" else "/v1/segment"
            article = "an" if wanted == "image" else "a"
            raise WrongModelKindError(
                f"model {name!r} segments {served.info.kind}s, and this endpoint needs "
                f"{article} {wanted} model: send {served.info.kind}s to {endpoint}"
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
