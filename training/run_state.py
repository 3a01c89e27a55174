"""Everything a resumable checkpoint holds besides the weights, saved and restored as one.

``RunState`` gathers the run's moving parts — optimiser, schedule, grad scaler, the
category-consistent loss's own projection, every process's RNG streams and the run's counters
(step, best mIoU, validation history, training time, images seen) — behind one pair of
methods, ``state_dict`` and ``load_state_dict``, that name the same keys. A new piece of state
is added in ``_PARTS`` (or ``Counters``) and is then saved and restored alike.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ccnet.training.schedule import PolyWarmupLR
from ccnet.training.state import restore_rng

__all__ = ["Counters", "RunState"]


@dataclass
class Counters:
    """Where a run stands; plain numbers and lists, so they load with ``weights_only``."""

    iteration: int = 0
    best_miou: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0  # optimiser-step time over all sessions of this run
    frames_seen: int = 0  # images (clip frames count one each) over all processes

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for spec in fields(self):
            if spec.name in state:
                kind = type(getattr(self, spec.name))
                setattr(self, spec.name, kind(state[spec.name]))


_PARTS = ("optimizer", "scheduler", "scaler", "category_consistent")


@dataclass
class RunState:
    """The resumable state of one process's run.

    Args:
        optimizer: the SGD optimiser (its groups in ``training.optim`` order).
        scheduler: the poly schedule.
        scaler: the AMP grad scaler (disabled on CPU, saved all the same).
        category_consistent: the optional loss module with its own weights.
        counters: step, best mIoU, history, time and images seen.
    """

    optimizer: torch.optim.Optimizer
    scheduler: PolyWarmupLR
    scaler: torch.amp.GradScaler
    category_consistent: nn.Module | None = None
    counters: Counters = field(default_factory=Counters)

    def state_dict(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """Plain data and tensors; ``rng`` is every process's ``capture_rng()``, rank order."""
        state: dict[str, Any] = {"rng": rng, **self.counters.state_dict()}
        for name in _PARTS:
            part = getattr(self, name)
            if part is not None:
                state[name] = part.state_dict()
        return state

    def load_state_dict(
        self, state: dict[str, Any], rank: int, world_size: int, where: Path
    ) -> None:
        """Inverse of ``state_dict`` for process ``rank`` of ``world_size``.

        RNG streams are restored when the checkpoint was written by as many processes (the run
        then continues bit-exactly); otherwise a note says they restart.

        Raises:
            ValueError: the checkpoint lacks a part this run has (``where`` names it).
        """
        for name in _PARTS:
            part = getattr(self, name)
            if part is None:
                continue
            if name not in state:
                raise ValueError(f"{where}: has no {name.replace('_', '-')} state")
            part.load_state_dict(state[name])
        self.counters.load_state_dict(state)
        rng = state["rng"]
        if len(rng) == world_size:
            restore_rng(rng[rank])
        elif rank == 0:
            print(
                f"note: {where} was written by {len(rng)} processes, this run has "
                f"{world_size}: random streams restart (not bit-exact)",
                file=sys.stderr,
            )
