"""Poly learning-rate schedule with an optional linear warm-up (the CCNet / DeepLab recipe).

``lr(it) = base · (1 − it / total) ** power``; during the first ``warmup`` steps this is further
scaled by a factor rising linearly from ``warmup_factor`` to 1. The schedule is a pure function
of the step, and its state dict is plain numbers, so it resumes exactly.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["PolyWarmupLR", "poly_warmup_factor"]


def poly_warmup_factor(
    step: int, total: int, power: float, warmup: int = 0, warmup_factor: float = 0.1
) -> float:
    """The multiplier of the base learning rate at ``step`` (0-based)."""
    factor = max(0.0, 1.0 - step / total) ** power
    if step < warmup:
        factor *= warmup_factor + (1.0 - warmup_factor) * step / warmup
    return factor


class PolyWarmupLR(LRScheduler):
    """``LRScheduler`` form of ``poly_warmup_factor``: call ``step()`` after each optimiser step.

    Args:
        optimizer: its groups' ``initial_lr`` are the base rates.
        total: the run's number of steps.
        power: poly exponent (0.9).
        warmup: warm-up steps.
        warmup_factor: the warm-up's starting fraction.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total: int,
        power: float = 0.9,
        warmup: int = 0,
        warmup_factor: float = 0.1,
    ) -> None:
        if total < 1:
            raise ValueError(f"total must be >= 1, got {total}")
        self.total = total
        self.power = power
        self.warmup = warmup
        self.warmup_factor = warmup_factor
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        factor = poly_warmup_factor(
            self.last_epoch, self.total, self.power, self.warmup, self.warmup_factor
        )
        return [base * factor for base in self.base_lrs]
