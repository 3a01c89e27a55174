"""Named model configurations and the builder that turns one into a network.

A ``ModelConfig`` is plain, frozen data: everything needed to rebuild the architecture and to
feed it correctly (input normalisation). Checkpoints carry it as a dict (``to_dict`` /
``from_dict``), so a checkpoint rebuilds its own network without knowing the zoo.

``flavour`` selects one of the two peer layouts as a whole: the backbone's stem and dilation
rule (see ``model.backbones.resnet``), the head activation (official: LeakyReLU(0.01), mmseg:
ReLU) and the bias of the auxiliary conv (official only). Our own configurations use the mmseg
layout: the cheaper stem and the contracted dilation (fewer gridding artefacts) at no cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn

from model.backbones.resnet import DEPTHS, DilatedResNet, Flavour
from model.ccnet import CCNet, CCNet3D

__all__ = [
    "IMAGENET_NORMALIZATION",
    "MMSEG_NORMALIZATION",
    "OFFICIAL_NORMALIZATION",
    "ModelConfig",
    "Normalization",
    "build_model",
    "get_config",
    "list_models",
]

ChannelOrder = Literal["RGB", "BGR"]


@dataclass(frozen=True)
class Normalization:
    """How to turn an RGB image with values 0..255 into the network's input.

    ``normalize`` scales the values to ``[0, value_scale]``, reorders the channels to
    ``channel_order`` and applies ``(x - mean) / std`` per channel (in that order).

    Args:
        mean: per channel, in ``channel_order`` and in units of ``value_scale``.
        std: per channel, likewise.
        channel_order: ``"RGB"`` or ``"BGR"`` (the official CCNet reads OpenCV's BGR).
        value_scale: the range the statistics are expressed in (255 for all our models).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: ChannelOrder = "RGB"
    value_scale: float = 255.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")

    def normalize(self, rgb: Tensor, channel_dim: int = -3) -> Tensor:
        """Network input from RGB values in 0..255 (uint8 or float), as float32.

        Args:
            rgb: images or clips; the channel axis (size 3, RGB) is ``channel_dim``
                (-3 for ``(…, 3, H, W)``, 1 for a clip ``(B, 3, T, H, W)``).
            channel_dim: index of the channel axis.
        """
        x = rgb.to(torch.float32) * (self.value_scale / 255.0)
        if self.channel_order == "BGR":
            x = x.flip(channel_dim)
        shape = [1] * x.dim()
        shape[channel_dim] = 3
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std


# ImageNet statistics in 0..255 units (0.485, 0.456, 0.406) × 255 etc.; mmseg uses the same.
IMAGENET_NORMALIZATION = Normalization(
    mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), channel_order="RGB"
)
MMSEG_NORMALIZATION = IMAGENET_NORMALIZATION
# speedinghzl/CCNet: OpenCV BGR image minus the Caffe ImageNet mean, no division.
OFFICIAL_NORMALIZATION = Normalization(
    mean=(104.00698793, 116.66876762, 122.67891434), std=(1.0, 1.0, 1.0), channel_order="BGR"
)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, defaults and input normalisation of one model.

    Args:
        name: the configuration's name (informative; rebuilding does not look it up).
        depth: ResNet depth, 18, 34, 50 or 101.
        width: channels of layer1's inner convs (64 = standard; smaller = slim network).
        flavour: ``official`` or ``mmseg`` layout (see the module docstring).
        output_stride: backbone output stride, 8, 16 or 32.
        head_channels: channels of the RCCA head's bottleneck.
        inter_channels: channels of the attention path; None = a quarter of layer4's.
        recurrence: passes of the shared criss-cross attention.
        aux_channels: channels of the auxiliary head on layer3; None = no auxiliary head.
        video: build CCNet3D (clips) instead of CCNet (images).
        clip_length: default window T for clips (the model accepts any T); 1 for images.
        num_classes: default number of classes.
        normalization: how inputs are normalised.
    """

    name: str
    depth: int
    width: int = 64
    flavour: Flavour = "mmseg"
    output_stride: int = 8
    head_channels: int = 512
    inter_channels: int | None = None
    recurrence: int = 2
    aux_channels: int | None = 256
    video: bool = False
    clip_length: int = 1
    num_classes: int = 19
    normalization: Normalization = IMAGENET_NORMALIZATION

    def __post_init__(self) -> None:
        if self.depth not in DEPTHS:
            raise ValueError(f"{self.name}: depth must be in {sorted(DEPTHS)}, got {self.depth}")
        if self.flavour not in ("official", "mmseg"):
            raise ValueError(f"{self.name}: flavour must be 'official' or 'mmseg'")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"{self.name}: output_stride must be 8, 16 or 32")
        if self.num_classes < 1 or self.clip_length < 1 or self.recurrence < 0:
            raise ValueError(f"{self.name}: num_classes, clip_length must be >= 1, recurrence >= 0")
        if not self.video and self.clip_length != 1:
            raise ValueError(f"{self.name}: clip_length applies to video models only")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible plain data (tuples become lists)."""
        data = dataclasses.asdict(self)
        norm = data["normalization"]
        norm["mean"], norm["std"] = list(norm["mean"]), list(norm["std"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; unknown or missing fields raise a ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model config fields: {', '.join(unknown)}")
        values = dict(data)
        norm = values.get("normalization")
        if isinstance(norm, dict):
            norm_names = {f.name for f in dataclasses.fields(Normalization)}
            if set(norm) - norm_names:
                raise ValueError(
                    f"unknown normalization fields: {', '.join(sorted(set(norm) - norm_names))}"
                )
            values["normalization"] = Normalization(**norm)
        try:
            return cls(**values)
        except TypeError as exc:  # a required field is missing
            raise ValueError(f"incomplete model config: {exc}") from exc


def _official(name: str, depth: int) -> ModelConfig:
    """The speedinghzl/CCNet layout (aux head 512 channels with a bias)."""
    return ModelConfig(
        name, depth, flavour="official", aux_channels=512, normalization=OFFICIAL_NORMALIZATION
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
