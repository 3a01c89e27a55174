"""Resumable checkpoints: the model file plus the training state, committed together.

Layout under ``RUN_DIR/checkpoints/``::

    iter_000500/model.pt   model.save_checkpoint (weights + metadata, usable on its own)
    iter_000500/state.pt   optimiser, scheduler, grad scaler, loss-module weights, RNG states,
                           iteration, best mIoU — plain data and tensors only, so it loads
                           with torch.load(weights_only=True)
    latest                 one line: the name of the newest *complete* iter_* folder

Each file is written atomically, and ``latest`` is replaced only after both files of a folder
exist, so a crash at any moment leaves ``latest`` pointing at a complete, consistent pair.
Older folders beyond ``keep`` are deleted after ``latest`` moves on.

RNG states are stored as tensors / lists (Python's ``random`` state as a list of ints,
NumPy's as a tensor), one entry per process, so every rank resumes its own streams.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccnet.model.checkpoint import load_plain
from ccnet.model.files import save_torch_atomic, write_text_atomic

__all__ = [
    "STATE_FORMAT",
    "capture_rng",
    "checkpoint_dir",
    "commit_checkpoint",
    "latest_checkpoint",
    "load_state",
    "restore_rng",
    "save_state",
]

STATE_FORMAT = "ccnet-train-state"
_STATE_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """This process's RNG states as plain data: torch CPU (and CUDA), NumPy, Python."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / "checkpoints" / f"iter_{iteration:06d}"


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a training state (plain data and tensors) atomically."""
    save_torch_atomic(path, {"format": STATE_FORMAT, "version": _STATE_VERSION, **state})


def commit_checkpoint(run_dir: Path, iteration: int, keep: int) -> None:
    """Point ``latest`` at ``iter_<iteration>`` (both files written) and prune old folders."""
    folder = checkpoint_dir(run_dir, iteration)
    for name in ("model.pt", "state.pt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: not written; refusing to commit")
    write_text_atomic(run_dir / "checkpoints" / "latest", folder.name + "\n")
    folders = sorted(p for p in (run_dir / "checkpoints").glob("iter_*") if p.is_dir())
    for old in folders[:-keep]:
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path:
    """The folder ``latest`` names.

    Raises:
        ValueError: no committed checkpoint in ``run_dir`` (nothing to resume).
    """
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        raise ValueError(f"{run_dir}: no checkpoint to resume from ({pointer} not found)")
    folder = run_dir / "checkpoints" / pointer.read_text().strip()
    if not (folder / "model.pt").is_file() or not (folder / "state.pt").is_file():
        raise ValueError(f"{pointer}: names {folder}, which lacks model.pt or state.pt")
    return folder


def load_state(path: Path) -> dict[str, Any]:
    """A training state, loaded with ``weights_only=True``; ValueError names the file."""
    state = load_plain(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a {STATE_FORMAT} file")
    if state.get("version") != _STATE_VERSION:
        raise ValueError(f"{path}: unsupported training-state version {state.get('version')!r}")
    return state
