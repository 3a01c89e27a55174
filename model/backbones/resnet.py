"""Dilated ResNet-18/34/50/101 with a deep stem, in the two flavours of the CCNet peers.

Segmentation wants dense features, so the last stages trade stride for dilation (output
stride 8 by default, 16 or 32 as options). Two flavours exist because the published
checkpoints differ in more than key names, and a converted checkpoint only reproduces its
results on the exact architecture it was trained with:

``official`` (speedinghzl/CCNet)
    stem 3×3 convs 64-64-128 (for width 64), max-pool with ``ceil_mode=True``, every block of a
    dilated stage uses the stage's full dilation.
``mmseg`` (mmsegmentation ResNetV1c)
    stem 32-32-64, max-pool without ``ceil_mode``, ``contract_dilation``: the first block of a
    dilated stage uses half the dilation (it is the block that would have strided).

Module names follow torchvision (``layer1``..``layer4``, ``conv1``/``bn1``…, ``downsample.0/1``)
so both peers' backbone weights map one-to-one; the stem is one ``stem`` module holding
``conv1, bn1, conv2, bn2, conv3, bn3``. Both flavours put the stride on the 3×3 conv of the
bottleneck ("ResNet v1.5").
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

from torch import Tensor, nn

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

Flavour = Literal["official", "mmseg"]
NormLayer = Callable[[int], nn.Module]
"""Builds a normalisation layer for a channel count (e.g. ``nn.BatchNorm2d``)."""
ActLayer = Callable[[], nn.Module]
"""Builds an activation (e.g. ``partial(nn.ReLU, inplace=True)``)."""

_RELU: ActLayer = partial(nn.ReLU, inplace=True)

# depth -> (block type, blocks per stage)
DEPTHS: dict[int, tuple[Literal["basic", "bottleneck"], tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

# output stride -> (stride, dilation) of layer3 and layer4; layer1/2 always (1, 1)/(2, 1)
_STAGE_GEOMETRY: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {
    8: ((1, 2), (1, 4)),
    16: ((2, 1), (1, 2)),
    32: ((2, 1), (2, 1)),
}


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding = dilation keeps the spatial size (up to the stride) for any dilation
    return nn.Conv2d(
        in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection (ResNet-18/34).

    Both convs are dilated (as in dilated residual networks), so the receptive field grows
    as it would have with the stride. mmsegmentation dilates only the first; this changes no
    weight shape, and mmseg publishes no CCNet with basic blocks.

    Args:
        in_channels: input channels.
        planes: output channels (``expansion`` is 1).
        stride: stride of the first conv.
        dilation: dilation of both convs.
        downsample: projection of the identity when shape changes, else None.
        norm_layer: normalisation factory.
        act_layer: activation factory.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _RELU,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.act1 = act_layer()
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm_layer(planes)
        self.act2 = act_layer()
        self.downsample = downsample
        self.dilation = dilation

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided / dilated), 1×1 expand, plus the residual (ResNet-50/101).

    Args:
        in_channels: input channels.
        planes: channels of the inner 3×3 conv; the output has ``planes * 4``.
        stride: stride of the 3×3 conv (both peers put it there, not on the first 1×1).
        dilation: dilation of the 3×3 conv.
        downsample: projection of the identity when shape changes, else None.
        norm_layer: normalisation factory.
        act_layer: activation factory.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _RELU,
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.act1 = act_layer()
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm_layer(planes)
        self.act2 = act_layer()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.act3 = act_layer()
        self.downsample = downsample
        self.dilation = dilation

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)


class DeepStem(nn.Module):
    """Three 3×3 convs (the first strided) and a 3×3/2 max-pool: output stride 4.

    A deep stem keeps more detail than one 7×7 conv, which matters at output stride 8.

    Args:
        channels: output channels of the three convs.
        ceil_mode: max-pool rounding; the official CCNet uses ``True``, mmseg ``False``
            (it changes the feature size by one for some input sizes).
        norm_layer: normalisation factory.
        act_layer: activation factory.
    """

    def __init__(
        self,
        channels: tuple[int, int, int],
        ceil_mode: bool,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _RELU,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = _conv3x3(3, c1, stride=2)
        self.bn1 = norm_layer(c1)
        self.act1 = act_layer()
        self.conv2 = _conv3x3(c1, c2)
        self.bn2 = norm_layer(c2)
        self.act2 = act_layer()
        self.conv3 = _conv3x3(c2, c3)
        self.bn3 = norm_layer(c3)
        self.act3 = act_layer()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_mode)
        self.out_channels = c3

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.maxpool(x)


def stage_dilations(num_blocks: int, dilation: int, flavour: Flavour) -> list[int]:
    """Dilation of each block of a stage.

    Args:
        num_blocks: blocks in the stage.
        dilation: the stage's dilation.
        flavour: ``official`` dilates every block fully; ``mmseg`` (``contract_dilation``)
            gives the first block of a dilated stage half of it.
    """
    first = dilation // 2 if flavour == "mmseg" and dilation > 1 else dilation
    return [first] + [dilation] * (num_blocks - 1)


class DilatedResNet(nn.Module):
    """Dilated ResNet with a deep stem; returns the features of every stage by name.

    Args:
        depth: 18, 34, 50 or 101.
        flavour: ``official`` or ``mmseg`` (stem widths, max-pool rounding, dilation rule).
        width: channels of layer1's inner convs (64 for the standard network); every other
            width scales with it, so a small value builds a slim network.
        output_stride: 8, 16 or 32; the stride of layer4's output.
        norm_layer: normalisation factory for the whole backbone.
        act_layer: activation factory for the whole backbone.

    Attributes:
        stage_channels: output channels of ``layer1``..``layer4``.
        stage_strides: output stride of ``layer1``..``layer4``.
    """

    def __init__(
        self,
        depth: int,
        *,
        flavour: Flavour = "mmseg",
        width: int = 64,
        output_stride: int = 8,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _RELU,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(DEPTHS)}")
        if output_stride not in _STAGE_GEOMETRY:
            choices = sorted(_STAGE_GEOMETRY)
            raise ValueError(f"unsupported output_stride {output_stride}; choose one of {choices}")
        if flavour not in ("official", "mmseg"):
            raise ValueError(f"unknown flavour {flavour!r}; choose 'official' or 'mmseg'")
        if width < 2 or width % 2:
            raise ValueError(f"width must be an even number >= 2, got {width}")
        kind, blocks = DEPTHS[depth]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.flavour = flavour
        self.width = width
        self.output_stride = output_stride

        stem = (width, width, 2 * width) if flavour == "official" else (width // 2,) * 2 + (width,)
        self.stem = DeepStem(
            stem, ceil_mode=flavour == "official", norm_layer=norm_layer, act_layer=act_layer
        )
        (s3, d3), (s4, d4) = _STAGE_GEOMETRY[output_stride]
        geometry = [(1, 1), (2, 1), (s3, d3), (s4, d4)]
        in_channels = self.stem.out_channels
        self.stage_channels: dict[str, int] = {}
        self.stage_strides: dict[str, int] = {}
        stride_so_far = 4
        for index, ((stride, dilation), count) in enumerate(zip(geometry, blocks, strict=True)):
            name = f"layer{index + 1}"
            planes = width * 2**index
            layer = self._make_stage(
                block, in_channels, planes, count, stride, dilation, norm_layer, act_layer
            )
            self.add_module(name, layer)
            in_channels = planes * block.expansion
            stride_so_far *= stride
            self.stage_channels[name] = in_channels
            self.stage_strides[name] = stride_so_far
        self._init_weights()

    def _make_stage(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        in_channels: int,
        planes: int,
        count: int,
        stride: int,
        dilation: int,
        norm_layer: NormLayer,
        act_layer: ActLayer,
    ) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                norm_layer(out_channels),
            )
        dilations = stage_dilations(count, dilation, self.flavour)
        layers = [
            block(in_channels, planes, stride, dilations[0], downsample, norm_layer, act_layer)
        ]
        layers += [
            block(out_channels, planes, 1, d, None, norm_layer, act_layer) for d in dilations[1:]
        ]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # He init suits ReLU networks trained from scratch (we ship no ImageNet weights).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Features of every stage, ``{"layer1": …, "layer4": …}``; (N, C_i, H/s_i, W/s_i)."""
        features: dict[str, Tensor] = {}
        x = self.stem(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            features[name] = x
        return features
