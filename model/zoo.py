"""Named model configurations (the zoo) and the builder that turns a configuration into a network.

The configuration dataclasses live in ``model.model_config``, which both this module and
``model.ccnet`` import, so the builder and the model never import each other. They are
re-exported here for existing callers. Our own configurations use the mmseg layout: the cheaper
stem and the contracted dilation (fewer gridding artefacts) at no cost.
"""

from __future__ import annotations

import dataclasses
from functools import partial

from torch import nn

from ccnet.model.backbones.resnet import DilatedResNet
from ccnet.model.ccnet import CCNet, CCNet3D
from ccnet.model.model_config import (
    IMAGENET_NORMALIZATION,
    MMSEG_NORMALIZATION,
    OFFICIAL_NORMALIZATION,
    ModelConfig,
    Normalization,
)
from ccnet.model.recipes import TrainingRecipe

__all__ = [
    "IMAGENET_NORMALIZATION",
    "MMSEG_NORMALIZATION",
    "OFFICIAL_NORMALIZATION",
    "ModelConfig",
    "Normalization",
    "build_model",
    "get_config",
    "get_recipe",
    "list_models",
]


def _official(name: str, depth: int) -> ModelConfig:
    """The speedinghzl/CCNet layout (aux conv 512 channels with a bias, corner-aligned resizes)."""
    return ModelConfig(
        name,
        depth,
        flavour="official",
        aux_channels=512,
        normalization=OFFICIAL_NORMALIZATION,
        align_corners=True,
    )


_TINY = ModelConfig("ccnet-tiny", 18, width=16, head_channels=64, aux_channels=32)
_R18 = ModelConfig("ccnet-r18", 18, head_channels=256, aux_channels=128)
_R50 = ModelConfig("ccnet-r50", 50)

_ZOO: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        _TINY,
        _R18,
        _R50,
        ModelConfig("ccnet-r101", 101),
        _official("ccnet-r101-official", 101),
        ModelConfig("ccnet-r50-mmseg", 50, normalization=MMSEG_NORMALIZATION),
        ModelConfig("ccnet-r101-mmseg", 101, normalization=MMSEG_NORMALIZATION),
        dataclasses.replace(_TINY, name="ccnet3d-tiny", video=True, clip_length=4),
        dataclasses.replace(_R18, name="ccnet3d-r18", video=True, clip_length=8),
        dataclasses.replace(_R50, name="ccnet3d-r50", video=True, clip_length=8),
    )
}


_DEMO = TrainingRecipe(crop_size=128, batch_size=8, iterations=3000, lr=0.02)
_CITYSCAPES = TrainingRecipe(crop_size=769, batch_size=8, iterations=60_000, lr=0.01)
_RECIPES: dict[str, TrainingRecipe] = {
    "ccnet-tiny": _DEMO,
    "ccnet3d-tiny": TrainingRecipe(crop_size=128, batch_size=2, iterations=3000, lr=0.01),
    # a clip of 8 frames is 8 images of work: 2 clips per step, crops as for images
    "ccnet3d-r18": dataclasses.replace(_CITYSCAPES, batch_size=2),
    "ccnet3d-r50": dataclasses.replace(_CITYSCAPES, batch_size=2),
}
"""Training defaults per zoo entry (``model.recipes``); the ResNet image models not listed
follow the paper's Cityscapes schedule."""


def get_recipe(name: str) -> TrainingRecipe:
    """The training defaults of zoo model ``name``; a ValueError lists the valid names."""
    get_config(name)  # unknown names fail with the zoo's message
    return _RECIPES.get(name, _CITYSCAPES)


def list_models() -> list[str]:
    """Names of the built-in configurations."""
    return list(_ZOO)


def get_config(name: str) -> ModelConfig:
    """The built-in configuration called ``name``; a ValueError lists the valid names."""
    try:
        return _ZOO[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(_ZOO)}") from None


def _build(config: ModelConfig) -> CCNet:
    """Wire backbone and heads for ``config`` (no name lookup, no weights)."""
    official = config.flavour == "official"
    backbone = DilatedResNet(
        config.depth,
        flavour=config.flavour,
        width=config.width,
        output_stride=config.output_stride,
    )
    act = partial(nn.LeakyReLU, 0.01, inplace=True) if official else partial(nn.ReLU, inplace=True)
    model_cls = CCNet3D if config.video else CCNet
    model = model_cls(
        config.num_classes,
        backbone,
        config.recurrence,
        head_channels=config.head_channels,
        inter_channels=config.inter_channels,
        aux_channels=config.aux_channels,
        aux_conv_bias=official,
        act_layer=act,
        align_corners=config.align_corners,
    )
    model.config = config
    return model


def build_model(name_or_config: str | ModelConfig, *, num_classes: int | None = None) -> CCNet:
    """Build a freshly initialised model (training mode) from a zoo name or a config.

    Args:
        name_or_config: a name from ``list_models()`` or a ``ModelConfig``.
        num_classes: overrides the configuration's default number of classes.

    Returns:
        ``CCNet`` or ``CCNet3D``; ``model.config`` holds the exact configuration used, so
        ``save_checkpoint`` can record it.
    """
    config = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if num_classes is not None:
        config = dataclasses.replace(config, num_classes=num_classes)
    return _build(config)
