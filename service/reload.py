"""Hot model reload: a models folder watched by polling, as Triton's model-control "poll" mode.

Every ``interval_s`` (or on ``POST /v1/models/reload``) the watcher lists the model files in
``CCNET_MODEL_DIR``. A new file, or one whose content changed, is loaded and warmed up in the
background by the registry while the old version keeps serving; only then is the new version
swapped in, by name, in one step. Requests already holding the old version finish on it (the
registry retires a replaced model once its last request has let go of it). A file that fails to
load leaves whatever was serving in place; the failure is kept for ``/v1/models`` and logged.
A removed file unloads its model.

Change detection is cheap first (size and modification time), then exact (SHA-256 of the
content), so touching a file reloads nothing. An export or engine is read with its sidecar
(``model.json`` beside ``model.onnx``): a change of either is a change of the model, so an
export whose sidecar arrives after it fails once, then loads. A file is read only once it
has stopped changing for one poll, so a checkpoint copied in slowly is never loaded
half-written (copying to a temporary name and renaming it into the folder, as ``cp`` + ``mv``
does, is instant).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ccnet.export.runtime.formats import MODEL_SUFFIXES
from ccnet.model.files import file_sha256

__all__ = [
    "FileFingerprint",
    "LoadFailure",
    "ModelVersion",
    "ModelWatcher",
    "ReloadReport",
    "ReloadRunner",
    "companion",
    "readable_name",
]

log = logging.getLogger("ccnet.service.reload")


def readable_name(path: Path) -> bool:
    """Whether a file name can be shown (in /v1/models, JSON, logs): a name that is not
    UTF-8 on disk (Python keeps its bytes as surrogates) cannot, and is skipped."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def companion(path: Path) -> Path | None:
    """The sidecar an export or engine is read with (``model.onnx`` → ``model.json``), whose
    change is a change of the model too; None for a checkpoint (it carries its metadata)."""
    return None if path.suffix == ".pt" else path.with_suffix(".json")


@dataclass(frozen=True)
class FileFingerprint:
    """What can be known of a model file (and its sidecar) without reading them."""

    size: int
    mtime_ns: int
    sidecar: tuple[int, int] | None = None

    @classmethod
    def of(cls, path: Path) -> FileFingerprint:
        status = path.stat()
        beside = companion(path)
        sidecar = None
        if beside is not None and beside.is_file():
            other = beside.stat()
            sidecar = (other.st_size, other.st_mtime_ns)
        return cls(status.st_size, status.st_mtime_ns, sidecar)


def _content_key(path: Path) -> tuple[str, str]:
    """(SHA-256 of the model file, a key of its content with its sidecar's)."""
    sha256 = file_sha256(path)
    beside = companion(path)
    if beside is None or not beside.is_file():
        return sha256, sha256
    return sha256, f"{sha256}+{file_sha256(beside)}"


@dataclass(frozen=True)
class ModelVersion:
    """Which file content a served model came from, and when it started serving."""

    path: Path
    sha256: str
    loaded_at: float  # time.time()

    def describe(self) -> dict[str, object]:
        """The ``version`` object of a /v1/models entry (no path: that stays in the log)."""
        return {
            "sha256": self.sha256,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "file": self.path.name,
        }


@dataclass(frozen=True)
class LoadFailure:
    """A model file in the folder that could not be (re)loaded."""

    file: str
    sha256: str
    message: str
    at: float

    def describe(self) -> dict[str, object]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "error": self.message,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
        }


@dataclass
class ReloadReport:
    """What one poll did."""

    loaded: list[str] = field(default_factory=list)  # model names now serving a new version
    unloaded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # file names
    pending: list[str] = field(default_factory=list)  # files still changing

    def describe(self) -> dict[str, list[str]]:
        return {
            "loaded": self.loaded,
            "unloaded": self.unloaded,
            "failed": self.failed,
            "pending": self.pending,
        }

    @property
    def changed(self) -> bool:
        return bool(self.loaded or self.unloaded or self.failed)


class ReloadTarget(Protocol):
    """What the watcher needs of the registry."""

    def replace_from_file(self, path: Path, version: ModelVersion, previous: str | None) -> str:
        """Load, warm up and swap in the model in ``path``; returns its name. ``previous`` is
        the name the file served before (None for a new file). Raises on failure, leaving
        whatever was serving untouched."""
        ...

    def unload(self, name: str) -> None:
        """Stop serving ``name`` (its last requests finish first)."""
        ...


@dataclass
class _Watched:
    fingerprint: FileFingerprint
    key: str  # ``_content_key``: the file's bytes and its sidecar's
    name: str | None  # the model it serves; None while its content fails to load


class ModelWatcher:
    """Keeps the registry in step with the model files of one folder.

    Args:
        directory: the models folder (``CCNET_MODEL_DIR``).
        target: the registry.
        interval_s: seconds between polls; 0 polls only when asked (``poll()``).
        initial: files already served at start-up, path → (model name, version), so the first
            poll does not load them again.
        on_failure: called with each new failure (the registry keeps them for /v1/models).
    """

    def __init__(
        self,
        directory: Path,
        target: ReloadTarget,
        *,
        interval_s: float,
        initial: Iterable[tuple[Path, str, ModelVersion]] = (),
        on_failure: Callable[[LoadFailure | None, str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.target = target
        self.interval_s = interval_s
        self.on_failure = on_failure
        self._watched: dict[Path, _Watched] = {}
        self._changing: dict[Path, FileFingerprint] = {}
        self._unreadable: set[Path] = set()  # logged once each
        for path, name, version in initial:
            try:
                fingerprint = FileFingerprint.of(path)
                _, key = _content_key(path)
            except OSError:
                continue
            if not key.startswith(version.sha256):  # changed since it loaded: load it again
                fingerprint, key = FileFingerprint(-1, -1), ""
            self._watched[path] = _Watched(fingerprint, key, name)
        self._lock = threading.Lock()  # one poll at a time (timer and POST /reload)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._runner = ReloadRunner(self)

    def request_poll(self) -> Future[ReloadReport]:
        """A poll now (``settle=False``), on the reload thread (``ReloadRunner``)."""
        return self._runner.submit()

    def start(self) -> None:
        """Poll every ``interval_s`` in a daemon thread (nothing when it is 0)."""
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._runner.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # a watcher that dies silently would stop all reloads
                log.exception("polling %s failed", self.directory)

    def _listing(self) -> dict[Path, FileFingerprint]:
        found: dict[Path, FileFingerprint] = {}
        try:
            entries = sorted(self.directory.iterdir())
        except OSError as error:
            log.warning("cannot list the models folder %s: %s", self.directory, error)
            return {path: w.fingerprint for path, w in self._watched.items()}  # change nothing
        for path in entries:
            if path.suffix not in MODEL_SUFFIXES or path.name.startswith("."):
                continue
            if not readable_name(path):
                if path not in self._unreadable:
                    self._unreadable.add(path)
                    log.warning(
                        "skipping a model file whose name is not UTF-8: %s",
                        os.fsencode(path.name),  # its bytes, escaped
                    )
                continue
            try:
                if path.is_file():
                    found[path] = FileFingerprint.of(path)
            except OSError:
                continue
        return found

    def poll(self, *, settle: bool = True) -> ReloadReport:
        """One pass over the folder: load what is new or changed, unload what is gone.

        Args:
            settle: load a new or changed file only once its size and modification time have
                stayed the same since the previous poll (the timer's polls); False loads it at
                once (``POST /v1/models/reload``: the operator says the copy is complete).
        """
        with self._lock:
            report = ReloadReport()
            listing = self._listing()
            for path in sorted(set(self._watched) - set(listing)):
                gone = self._watched.pop(path)
                self._changing.pop(path, None)
                if gone.name is not None:
                    self.target.unload(gone.name)
                    report.unloaded.append(gone.name)
                    log.info("unloaded %s: %s was removed", gone.name, path.name)
                if self.on_failure is not None:
                    self.on_failure(None, path.name)
            for path, fingerprint in listing.items():
                known = self._watched.get(path)
                if known is not None and known.fingerprint == fingerprint:
                    continue
                if settle and self._changing.get(path) != fingerprint:
                    # first sight of this size/mtime: wait one poll for the writer to finish
                    self._changing[path] = fingerprint
                    report.pending.append(path.name)
                    continue
                self._changing.pop(path, None)
                self._consider(path, fingerprint, known, report)
            return report

    def _consider(
        self, path: Path, fingerprint: FileFingerprint, known: _Watched | None, report: ReloadReport
    ) -> None:
        try:
            sha256, key = _content_key(path)
        except OSError as error:
            log.warning("cannot read %s: %s", path, error)
            return
        if known is not None and known.key == key:
            known.fingerprint = fingerprint  # touched, not changed
            return
        previous = known.name if known is not None else None
        version = ModelVersion(path, sha256, time.time())
        began = time.perf_counter()
        try:
            name = self.target.replace_from_file(path, version, previous)
        except Exception as error:
            message = _one_line(error)
            log.error(
                "reloading %s failed (%s); %s",
                path,
                message,
                f"{previous} keeps serving its old version" if previous else "nothing loaded",
                exc_info=error,
                extra={"model": previous or path.stem},
            )
            self._watched[path] = _Watched(fingerprint, key, previous)
            report.failed.append(path.name)
            if self.on_failure is not None:
                self.on_failure(LoadFailure(path.name, sha256, message, time.time()), path.name)
            return
        self._watched[path] = _Watched(fingerprint, key, name)
        report.loaded.append(name)
        if self.on_failure is not None:
            self.on_failure(None, path.name)  # an earlier failure of this file is resolved
        log.info(
            "%s %s from %s (sha256 %s) in %.1f s",
            "reloaded" if previous else "loaded",
            name,
            path.name,
            sha256[:12],
            time.perf_counter() - began,
            extra={"model": name},
        )


# an absolute path: its directories go, its file name stays (answers name no server paths)
_DIRECTORIES = re.compile(r"(?:/[\w.+~-]+)+/(?=[\w.+~-])")


def _one_line(error: BaseException, limit: int = 400) -> str:
    """The error and its causes in one line (at most ``limit`` characters), without the
    directories of file paths: /v1/models shows it; the log has the full traceback."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None and len(parts) < 3:
        text = str(current).strip().splitlines()[0] if str(current).strip() else ""
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__
    line = _DIRECTORIES.sub("", "; ".join(parts))
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ReloadRunner:
    """Runs the watcher's polls for ``POST /v1/models/reload`` on a thread of their own.

    A reload may take seconds (loading and warming a model); run on the request thread pool,
    callers queueing for the watcher's lock would hold its threads and starve every other
    route (``/healthz`` too). Here they wait on one dedicated thread, and calls arriving
    while a poll is still queued share it rather than queue another.
    """

    def __init__(self, watcher: ModelWatcher) -> None:
        self.watcher = watcher
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model-reload")
        self._lock = threading.Lock()
        self._queued: Future[ReloadReport] | None = None

    def submit(self) -> Future[ReloadReport]:
        """A poll (``settle=False``) that starts after any running one."""
        with self._lock:
            if self._queued is not None and not self._queued.running() and not self._queued.done():
                return self._queued
            self._queued = self._executor.submit(self.watcher.poll, settle=False)
            return self._queued

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
