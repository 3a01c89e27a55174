"""Parameter groups, the optimiser and the learning-rate schedule of a training run.

Three groups, so that fine-tuning can move the parts of the network at different speeds:

``rest``       the backbone, the auxiliary head and any trainable loss weights: ``lr``
``head``       the RCCA head outside the attention block: ``lr · head_lr_mult``
``attention``  the criss-cross attention block: ``lr · head_lr_mult · attention_lr_mult``

The order of the groups and of the parameters inside each is part of a checkpoint (the
optimiser's state is saved by position), so it is fixed here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ccnet.model import CCNet
from ccnet.training.config import TrainConfig
from ccnet.training.schedule import PolyWarmupLR

__all__ = ["build_optimizer", "build_scheduler", "parameter_groups"]


def parameter_groups(
    objective: nn.Module, model: CCNet, config: TrainConfig
) -> list[dict[str, Any]]:
    """The three SGD groups (module docstring) over every parameter of ``objective``.

    Args:
        objective: what the optimiser updates: the model and the losses' own weights.
        model: the network inside ``objective`` (its ``head`` and ``head.cca`` are the groups).
        config: supplies ``lr``, ``head_lr_mult`` and ``attention_lr_mult``.
    """
    attention = list(model.head.cca.parameters())
    in_attention = {id(p) for p in attention}
    head = [p for p in model.head.parameters() if id(p) not in in_attention]
    in_head = {id(p) for p in head} | in_attention
    rest = [p for p in objective.parameters() if id(p) not in in_head]
    head_lr = config.lr * config.head_lr_mult
    return [
        {"params": rest, "lr": config.lr},
        {"params": head, "lr": head_lr},
        {"params": attention, "lr": head_lr * config.attention_lr_mult},
    ]


def build_optimizer(objective: nn.Module, model: CCNet, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay over ``parameter_groups``."""
    return torch.optim.SGD(
        parameter_groups(objective, model, config),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> PolyWarmupLR:
    """Poly decay over ``iterations`` steps after an optional linear warm-up."""
    return PolyWarmupLR(
        optimizer,
        config.iterations,
        config.power,
        config.warmup_iterations,
        config.warmup_factor,
    )
