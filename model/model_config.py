"""Model configuration data: the architecture, the input normalisation and the output geometry.

A ``ModelConfig`` is plain, frozen data: everything needed to rebuild a network and to feed it
correctly. Checkpoints carry it as a dict (``to_dict`` / ``from_dict``), so a checkpoint rebuilds
its own network without knowing the zoo. It lives apart from the layer code and from the zoo so
that ``model.ccnet`` (which records it on the model) and ``model.zoo`` (which builds from it)
both import it and never each other. (``model.config`` is another thing: the switches that pick
the criss-cross attention implementation.)

``flavour`` selects one of the two peer layouts as a whole: the backbone's stem and dilation
rule (see ``model.backbones.resnet``), the head activation (official: LeakyReLU(0.01), mmseg:
ReLU) and the bias of the auxiliary conv (official only).

``align_corners`` is the sampling grid of the final bilinear upsampling of the logits (and of
every later resize of logits: losses, evaluation, service, export). The official CCNet trains
and evaluates with ``True``; mmsegmentation takes it from its config (``True`` in its 769×769
Cityscapes configs, ``False`` by default); our own models use ``False``. A checkpoint without the
field predates it and was made with ``False``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ccnet.model.backbones.resnet import DEPTHS, Flavour

__all__ = [
    "IMAGENET_NORMALIZATION",
    "MMSEG_NORMALIZATION",
    "OFFICIAL_NORMALIZATION",
    "ChannelOrder",
    "ModelConfig",
    "Normalization",
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

# upper bounds on a config read from a checkpoint (a model file is untrusted input): far above
# any real CCNet, far below a size that exhausts memory while the layers are built
_MAX_CLASSES = 1024
_MAX_CLIP_LENGTH = 64
_MAX_RECURRENCE = 8
_MAX_CHANNELS = 4096


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
        align_corners: grid of every bilinear resize of the logits (see the module docstring).
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
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.depth not in DEPTHS:
            raise ValueError(f"{self.name}: depth must be in {sorted(DEPTHS)}, got {self.depth}")
        if self.flavour not in ("official", "mmseg"):
            raise ValueError(f"{self.name}: flavour must be 'official' or 'mmseg'")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"{self.name}: output_stride must be 8, 16 or 32")
        if self.num_classes < 1 or self.clip_length < 1 or self.recurrence < 0:
            raise ValueError(f"{self.name}: num_classes, clip_length must be >= 1, recurrence >= 0")
        # a checkpoint's config is read from a file: sizes are bounded before layers are built
        for field_name, value, high in (
            ("num_classes", self.num_classes, _MAX_CLASSES),
            ("clip_length", self.clip_length, _MAX_CLIP_LENGTH),
            ("recurrence", self.recurrence, _MAX_RECURRENCE),
            ("width", self.width, _MAX_CHANNELS),
            ("head_channels", self.head_channels, _MAX_CHANNELS),
            ("inter_channels", self.inter_channels or 1, _MAX_CHANNELS),
            ("aux_channels", self.aux_channels or 1, _MAX_CHANNELS),
        ):
            if not 1 <= value <= high and not (field_name == "recurrence" and value == 0):
                raise ValueError(f"{self.name}: {field_name} must be at most {high}, got {value}")
        if not isinstance(self.align_corners, bool):
            raise ValueError(f"{self.name}: align_corners must be true or false")
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
        """Inverse of ``to_dict``; unknown fields or missing required ones raise a ValueError.

        Optional fields a dict lacks take their defaults: a checkpoint written before a field
        existed (``align_corners``, say) loads as it was made.
        """
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
