"""How a zoo model is trained by default: crop, batch, schedule length and learning rate.

A recipe is kept beside the architecture (``ModelConfig``), not inside it: it is advice for
``ccnet train`` — a run overrides any of it with a flag — and it does not describe the weights,
so it is not stored with them (a run records the values it used in its ``config.json``).

Where the numbers come from: the ResNet models follow the CCNet paper's Cityscapes schedule
(769×769 crops, 8 images per step, 60 000 steps, lr 0.01; the paper trains 4 GPUs × 2 images,
i.e. ``--batch-size 2`` under ``torchrun --nproc-per-node 4``); ``ccnet-tiny`` and
``ccnet3d-tiny`` use the README's demo recipe, which trains the bundled checkpoints from the
128-pixel synthetic scenes on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainingRecipe"]


@dataclass(frozen=True)
class TrainingRecipe:
    """Defaults of ``ccnet train`` for one model.

    Args:
        crop_size: square training crop, pixels; also the tile of sliding-window evaluation.
        batch_size: samples per process per step (a clip counts as one sample).
        iterations: optimiser steps.
        lr: base learning rate.
    """

    crop_size: int
    batch_size: int
    iterations: int
    lr: float = 0.01

    def __post_init__(self) -> None:
        if min(self.crop_size, self.batch_size, self.iterations) < 1 or self.lr <= 0:
            raise ValueError(f"a recipe needs positive values, got {self}")
