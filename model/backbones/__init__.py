"""Backbones for CCNet: dilated ResNets with a deep stem."""

from ccnet.model.backbones.resnet import (
    DEPTHS,
    ActLayer,
    BasicBlock,
    Bottleneck,
    DeepStem,
    DilatedResNet,
    Flavour,
    NormLayer,
    stage_dilations,
)

__all__ = [
    "DEPTHS",
    "ActLayer",
    "BasicBlock",
    "Bottleneck",
    "DeepStem",
    "DilatedResNet",
    "Flavour",
    "NormLayer",
    "stage_dilations",
]
