"""Atomic file writes for everything the project produces.

A crash, a full disk or a killed job must leave either the previous file or none under the
final name, never a truncated one: a resumed run, a server reading its models and a user
re-running an export all trust whatever they find. Every writer goes through here: bytes are
written to a temporary file in the target directory, synced, given the permissions a plain
``open`` would give, and renamed over the target (atomic within a file system).

It lives in ``model`` because that is the one package every other package may import
(``training``, ``export`` and ``service`` depend on ``model``, never on each other).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ensure_writable_dir",
    "file_key",
    "file_sha256",
    "replace_dir",
    "save_torch_atomic",
    "write_bytes_atomic",
    "write_files_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

PathLike = str | os.PathLike[str]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_temporary(path: Path, data: bytes) -> str:
    """A synced temporary file beside ``path`` holding ``data``; returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; honour the umask instead
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def write_files_atomic(files: Mapping[Path, bytes]) -> list[Path]:
    """Write each file to a temporary beside it, then rename all of them into place.

    Nothing is renamed until every temporary is complete and synced, so a failure while
    writing leaves the previous files (or none); each rename is atomic.
    """
    temporaries: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            temporaries.append((_write_temporary(Path(path), data), Path(path)))
        for tmp, path in temporaries:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temporaries:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return [path for _, path in temporaries]


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; parent directories are created."""
    return write_files_atomic({Path(path): data})[0]


def write_text_atomic(path: PathLike, text: str) -> Path:
    """UTF-8 text, atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, data: Any) -> Path:
    """Indented JSON with a trailing newline, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_torch_atomic(path: PathLike, payload: Any) -> Path:
    """``torch.save`` of plain data (tensors, dicts, lists, numbers, strings), atomically.

    The payload is serialised in memory first, so a failure while pickling never touches the
    disk; keep payloads plain so they load with ``torch.load(weights_only=True)``.
    """
    buffer = io.BytesIO()
    import torch  # here only: the file helpers serve light importers too (hashes, JSON)

    torch.save(payload, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def ensure_writable_dir(directory: PathLike) -> Path:
    """Create ``directory`` if needed and prove a file can be created in it.

    Call it before long work (an export, a training run), so a bad output path fails in a
    second, not after minutes.

    Raises:
        OSError: naming the directory and the reason (a file in the way, no permission, ...).
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(error.errno, f"cannot write to output directory {path}: {reason}") from None
    return path


def replace_dir(staging: Path, target: Path) -> None:
    """Move the finished directory ``staging`` to ``target``, replacing an existing one.

    The old directory is renamed aside first and deleted only after the new one is in place,
    so ``target`` is always either the old or the new complete tree.
    """
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks (model files can be large). The one content hash
    of the project: sidecars, hot reload and the precision gate's cache all use it."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_key(path: PathLike) -> str:
    """The first 16 hex digits of a file's SHA-256 (cache keys: models by content, not name)."""
    return file_sha256(path)[:16]
