"""What a trained checkpoint says about how it was made, and the summary of a finished run.

Every checkpoint a run writes (resumable, ``best.pt``, ``final.pt``) carries its provenance:
the command that reproduces it, the resolved settings, how far the run had got, the data it
saw (and the ``ccnet synth`` generator that made that data, when it did) and its validation
scores. ``ccnet evaluate --mode slide`` reads the training crop from here.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ccnet.training.config import TrainConfig
from ccnet.training.metrics import SCORES_ARE
from ccnet.training.run_state import Counters

__all__ = ["data_generator", "provenance", "run_summary"]


def data_generator(root: Path) -> dict[str, Any] | None:
    """The ``generator`` entry of a ``ccnet synth`` data set's classes.json."""
    try:
        data = json.loads((root / "classes.json").read_text())
    except (OSError, ValueError):
        return None
    generator = data.get("generator") if isinstance(data, dict) else None
    return generator if isinstance(generator, dict) else None


def provenance(
    config: TrainConfig,
    command: str,
    counters: Counters,
    *,
    layout: str,
    world_size: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``provenance`` entry of a checkpoint's metadata at the run's current step."""
    seconds = counters.train_seconds
    entry: dict[str, Any] = {
        "source": "ccnet train",
        "command": command,
        "iteration": counters.iteration,
        "iterations": config.iterations,
        "data": str(config.data),
        "layout": layout,
        "world_size": world_size,
        "train_seconds": round(seconds, 1),
        "images_per_second": round(counters.frames_seen / seconds, 2) if seconds else None,
        "train_config": config.to_dict(),
        **(extra or {}),
    }
    generator = data_generator(Path(config.data))
    if generator is not None:
        entry["data_generator"] = generator
    if counters.history:
        entry["val_mIoU"] = counters.history[-1]["mIoU"]
        entry["best_val_mIoU"] = max(
            (h["mIoU"] for h in counters.history if h["mIoU"] is not None), default=None
        )
    return entry


def run_summary(
    counters: Counters,
    *,
    model: str,
    classes: list[str],
    start: int,
    validated_at: int,
    started: float,
    world_size: int,
    device: torch.device,
    command: str,
) -> dict[str, Any]:
    """Results of the run (``summary.json``); time and throughput cover every session of a
    resumed run, ``val`` is the result of a validation at the last step (else None)."""
    seconds = counters.train_seconds
    last = counters.history[-1] if counters.history else None
    return {
        "model": model,
        "classes": classes,
        "iterations": counters.iteration,
        "resumed_from": start or None,
        "steps_this_run": counters.iteration - start,
        "train_seconds": round(seconds, 2),
        "session_wall_seconds": round(time.perf_counter() - started, 1),
        "images_per_second": round(counters.frames_seen / seconds, 2) if seconds else None,
        "world_size": world_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "val": last if last and validated_at == counters.iteration else None,
        "best_val_mIoU": counters.best_miou if counters.best_miou > -math.inf else None,
        "scores_are": SCORES_ARE,
        "command": command,
    }
