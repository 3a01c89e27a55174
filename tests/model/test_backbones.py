"""Dilated ResNets: feature sizes at odd inputs, per-block dilation/stride, stem, channel counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ccnet.model.backbones import DEPTHS, BasicBlock, Bottleneck, DilatedResNet, stage_dilations

FLAVOURS = ("official", "mmseg")


def _down(size: int, ceil_mode: bool = False) -> int:
    """Output size of a 3×3 / stride 2 / padding 1 conv or pool (PyTorch's rounding rules)."""
    if not ceil_mode:
        return (size + 2 - 3) // 2 + 1
    out = -(-(size + 2 - 3) // 2) + 1
    return out - 1 if (out - 1) * 2 >= size + 1 else out  # last window must start inside


def _expected_sizes(size: int, flavour: str, output_stride: int) -> list[int]:
    """Spatial size after layer1..layer4, computed from the layer definitions."""
    x = _down(_down(size), ceil_mode=flavour == "official")  # stem conv1, max-pool
    sizes = [x]
    strided = {8: (2,), 16: (2, 3), 32: (2, 3, 4)}[output_stride]
    for stage in (2, 3, 4):
        if stage in strided:
            x = _down(x)
        sizes.append(x)
    return sizes


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_feature_shapes_at_odd_input(depth: int, output_stride: int, flavour: str) -> None:
    width = 8
    net = DilatedResNet(depth, flavour=flavour, width=width, output_stride=output_stride).eval()
    with torch.no_grad():
        features = net(torch.randn(1, 3, 97, 131))
    expansion = 1 if DEPTHS[depth][0] == "basic" else 4
    heights = _expected_sizes(97, flavour, output_stride)
    widths = _expected_sizes(131, flavour, output_stride)
    assert list(features) == ["layer1", "layer2", "layer3", "layer4"]
    for i, name in enumerate(features):
        channels = width * 2**i * expansion
        expected = (1, channels, heights[i], widths[i])
        assert tuple(features[name].shape) == expected, (
            f"{depth}/{flavour}/OS{output_stride} {name}"
        )
        assert net.stage_channels[name] == channels
    assert net.stage_strides == {
        "layer1": 4,
        "layer2": 8,
        "layer3": 8 if output_stride == 8 else 16,
        "layer4": output_stride,
    }


def test_official_and_mmseg_differ_in_size_where_ceil_mode_matters() -> None:
    # 66 after the stride-2 conv: ceil-mode pooling gives 34, floor mode 33 (input 131 wide).
    assert _expected_sizes(131, "official", 8)[0] == 34
    assert _expected_sizes(131, "mmseg", 8)[0] == 33
    sizes = {}
    for flavour in FLAVOURS:
        net = DilatedResNet(18, flavour=flavour, width=8).eval()
        with torch.no_grad():
            sizes[flavour] = net(torch.randn(1, 3, 97, 131))["layer1"].shape[-1]
    assert sizes == {"official": 34, "mmseg": 33}


def _block_geometry(net: DilatedResNet, stage: str) -> list[tuple[int, int]]:
    """(stride, dilation) of the spatial conv of each block, read off the conv modules."""
    out = []
    for block in getattr(net, stage):
        conv = block.conv2 if isinstance(block, Bottleneck) else block.conv1
        assert conv.padding == conv.dilation, "padding must equal dilation to keep the size"
        if isinstance(block, BasicBlock):
            assert block.conv2.dilation == conv.dilation
        out.append((conv.stride[0], conv.dilation[0]))
    return out


@pytest.mark.parametrize(
    ("flavour", "output_stride", "expected3", "expected4"),
    [
        ("official", 8, [(1, 2)] + [(1, 2)] * 22, [(1, 4), (1, 4), (1, 4)]),
        ("mmseg", 8, [(1, 1)] + [(1, 2)] * 22, [(1, 2), (1, 4), (1, 4)]),
        ("official", 16, [(2, 1)] + [(1, 1)] * 22, [(1, 2), (1, 2), (1, 2)]),
        ("mmseg", 16, [(2, 1)] + [(1, 1)] * 22, [(1, 1), (1, 2), (1, 2)]),
    ],
)
def test_dilation_per_block_resnet101(
    flavour: str,
    output_stride: int,
    expected3: list[tuple[int, int]],
    expected4: list[tuple[int, int]],
) -> None:
    with torch.device("meta"):
        net = DilatedResNet(101, flavour=flavour, output_stride=output_stride)
    assert _block_geometry(net, "layer1") == [(1, 1)] * 3
    assert _block_geometry(net, "layer2") == [(2, 1)] + [(1, 1)] * 3
    assert _block_geometry(net, "layer3") == expected3
    assert _block_geometry(net, "layer4") == expected4


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_dilation_per_block_basic(flavour: str) -> None:
    net = DilatedResNet(34, flavour=flavour, width=8)
    first3, first4 = (1, 2) if flavour == "mmseg" else (2, 4)
    assert _block_geometry(net, "layer3") == [(1, first3)] + [(1, 2)] * 5
    assert _block_geometry(net, "layer4") == [(1, first4)] + [(1, 4)] * 2


def test_stage_dilations_rule() -> None:
    assert stage_dilations(3, 4, "official") == [4, 4, 4]
    assert stage_dilations(3, 4, "mmseg") == [2, 4, 4]
    assert stage_dilations(2, 1, "mmseg") == [1, 1]


@pytest.mark.parametrize(
    ("flavour", "channels", "ceil_mode"),
    [("official", (64, 64, 128), True), ("mmseg", (32, 32, 64), False)],
)
def test_stem(flavour: str, channels: tuple[int, int, int], ceil_mode: bool) -> None:
    with torch.device("meta"):
        net = DilatedResNet(50, flavour=flavour)
    stem = net.stem
    assert (stem.conv1.out_channels, stem.conv2.out_channels, stem.conv3.out_channels) == channels
    assert [c.kernel_size for c in (stem.conv1, stem.conv2, stem.conv3)] == [(3, 3)] * 3
    assert [c.stride for c in (stem.conv1, stem.conv2, stem.conv3)] == [(2, 2), (1, 1), (1, 1)]
    assert stem.maxpool.ceil_mode is ceil_mode
    assert net.layer1[0].conv1.in_channels == channels[2]


# Parameters of torchvision's resnet18/34/50/101 (11,689,512 / 21,797,672 / 25,557,032 /
# 44,549,160) minus the 7×7 stem, its BN and the 1000-way fc: what layer1..layer4 hold. The
# mmseg layout has the same stages (layer1 reads 64 channels), so the counts must agree.
TORCHVISION_STAGE_PARAMS = {
    18: 11_689_512 - 9_408 - 128 - 513_000,
    34: 21_797_672 - 9_408 - 128 - 513_000,
    50: 25_557_032 - 9_408 - 128 - 2_049_000,
    101: 44_549_160 - 9_408 - 128 - 2_049_000,
}


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_stage_parameter_counts_match_standard_resnet(depth: int) -> None:
    with torch.device("meta"):
        net = DilatedResNet(depth, flavour="mmseg")
    stages = sum(p.numel() for name, p in net.named_parameters() if not name.startswith("stem."))
    assert stages == TORCHVISION_STAGE_PARAMS[depth]


def test_torchvision_style_names() -> None:
    with torch.device("meta"):
        keys = set(DilatedResNet(50).state_dict())
    for key in (
        "stem.conv1.weight",
        "stem.bn3.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.bias",
    ):
        assert key in keys, key


def test_norm_and_act_layers_are_pluggable() -> None:
    net = DilatedResNet(
        18,
        width=8,
        norm_layer=lambda c: nn.GroupNorm(2, c),
        act_layer=lambda: nn.LeakyReLU(0.1),
    )
    modules = list(net.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert any(isinstance(m, nn.GroupNorm) for m in modules)
    assert not any(isinstance(m, nn.ReLU) for m in modules)
    out = net(torch.randn(2, 3, 33, 45))["layer4"]
    assert out.shape == (2, 64, 5, 6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 152}, "depth"),
        ({"depth": 50, "output_stride": 4}, "output_stride"),
        ({"depth": 50, "flavour": "caffe"}, "flavour"),
        ({"depth": 50, "width": 3}, "width"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DilatedResNet(**kwargs)
