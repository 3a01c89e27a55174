"""Independent restatements of the peers' CCNet checkpoints and networks, for conversion tests.

Key lists and shapes are written from the peers' module trees (speedinghzl/CCNet
``networks/ccnet.py``; mmsegmentation ResNetV1c + CCHead + FCNHead), not from ``model.convert``.
The forward passes are written from the peers' published semantics with functional ops:

* official: every norm is an InPlaceABN, which scales by ``abs(w) + eps`` (eps 1e-5), in eval as
  in training; backbone norms have an identity activation and a separate ReLU, the head's and
  the auxiliary head's norms apply LeakyReLU(0.01); the evaluation upsamples the 1/8 logits
  bilinearly with ``align_corners=True``.
* mmseg: plain BatchNorm + ReLU (``ConvModule``), contracted dilation; ``align_corners`` from
  the config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ccnet.model.cca import criss_cross_attention

LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


# ----------------------------------------------------------------------------- peer key lists
def _bn(prefix: str, channels: int, counter: bool) -> dict[str, tuple[int, ...]]:
    shapes = {
        f"{prefix}{n}": (channels,) for n in ("weight", "bias", "running_mean", "running_var")
    }
    if counter:  # nn.BatchNorm / SyncBN; InPlaceABNSync (official) has no counter
        shapes[f"{prefix}num_batches_tracked"] = ()
    return shapes


def _resnet_keys(
    prefix: str, depth: int, width: int, in_channels: int, counter: bool
) -> dict[str, tuple[int, ...]]:
    """layer1..layer4 of a bottleneck ResNet with torchvision names."""
    shapes: dict[str, tuple[int, ...]] = {}
    inplanes = in_channels
    for stage, blocks in enumerate(LAYERS[depth]):
        planes = width * 2**stage
        for b in range(blocks):
            p = f"{prefix}layer{stage + 1}.{b}."
            shapes[p + "conv1.weight"] = (planes, inplanes, 1, 1)
            shapes |= _bn(p + "bn1.", planes, counter)
            shapes[p + "conv2.weight"] = (planes, planes, 3, 3)
            shapes |= _bn(p + "bn2.", planes, counter)
            shapes[p + "conv3.weight"] = (planes * 4, planes, 1, 1)
            shapes |= _bn(p + "bn3.", planes * 4, counter)
            if b == 0:  # every stage's first block changes channels (or stride)
                shapes[p + "downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                shapes |= _bn(p + "downsample.1.", planes * 4, counter)
            inplanes = planes * 4
    return shapes


def official_keys(
    depth: int, num_classes: int, width: int = 64, head: int = 512, aux: int = 512
) -> dict[str, tuple[int, ...]]:
    """speedinghzl/CCNet ``ResNet`` (networks/ccnet.py): key -> shape."""
    w = width
    shapes = {"conv1.weight": (w, 3, 3, 3), "conv2.weight": (w, w, 3, 3)}
    shapes["conv3.weight"] = (2 * w, w, 3, 3)
    shapes |= _bn("bn1.", w, False) | _bn("bn2.", w, False) | _bn("bn3.", 2 * w, False)
    shapes |= _resnet_keys("", depth, w, 2 * w, counter=False)
    c = 32 * w
    inter = c // 4
    shapes["head.conva.0.weight"] = (inter, c, 3, 3)
    shapes |= _bn("head.conva.1.", inter, False)
    shapes |= {
        "head.cca.query_conv.weight": (inter // 8, inter, 1, 1),
        "head.cca.query_conv.bias": (inter // 8,),
        "head.cca.key_conv.weight": (inter // 8, inter, 1, 1),
        "head.cca.key_conv.bias": (inter // 8,),
        "head.cca.value_conv.weight": (inter, inter, 1, 1),
        "head.cca.value_conv.bias": (inter,),
        "head.cca.gamma": (1,),
    }
    shapes["head.convb.0.weight"] = (inter, inter, 3, 3)
    shapes |= _bn("head.convb.1.", inter, False)
    shapes["head.bottleneck.0.weight"] = (head, c + inter, 3, 3)
    shapes |= _bn("head.bottleneck.1.", head, False)
    shapes["head.bottleneck.3.weight"] = (num_classes, head, 1, 1)
    shapes["head.bottleneck.3.bias"] = (num_classes,)
    shapes["dsn.0.weight"] = (aux, c // 2, 3, 3)
    shapes["dsn.0.bias"] = (aux,)
    shapes |= _bn("dsn.1.", aux, False)
    shapes["dsn.3.weight"] = (num_classes, aux, 1, 1)
    shapes["dsn.3.bias"] = (num_classes,)
    return shapes


def mmseg_keys(
    depth: int, num_classes: int, width: int = 64, channels: int = 512, aux: int = 256
) -> dict[str, tuple[int, ...]]:
    """mmsegmentation ``EncoderDecoder`` with ResNetV1c + CCHead + FCNHead: key -> shape."""
    w, half = width, width // 2
    shapes = {
        "backbone.stem.0.weight": (half, 3, 3, 3),
        "backbone.stem.3.weight": (half, half, 3, 3),
        "backbone.stem.6.weight": (w, half, 3, 3),
    }
    shapes |= _bn("backbone.stem.1.", half, True) | _bn("backbone.stem.4.", half, True)
    shapes |= _bn("backbone.stem.7.", w, True)
    shapes |= _resnet_keys("backbone.", depth, w, w, counter=True)
    c = 32 * w
    d = "decode_head."
    shapes[d + "convs.0.conv.weight"] = (channels, c, 3, 3)
    shapes |= _bn(d + "convs.0.bn.", channels, True)
    shapes |= {
        d + "cca.query_conv.weight": (channels // 8, channels, 1, 1),
        d + "cca.query_conv.bias": (channels // 8,),
        d + "cca.key_conv.weight": (channels // 8, channels, 1, 1),
        d + "cca.key_conv.bias": (channels // 8,),
        d + "cca.value_conv.weight": (channels, channels, 1, 1),
        d + "cca.value_conv.bias": (channels,),
        d + "cca.gamma.scale": (),
    }
    shapes[d + "convs.1.conv.weight"] = (channels, channels, 3, 3)
    shapes |= _bn(d + "convs.1.bn.", channels, True)
    shapes[d + "conv_cat.conv.weight"] = (channels, c + channels, 3, 3)
    shapes |= _bn(d + "conv_cat.bn.", channels, True)
    shapes[d + "conv_seg.weight"] = (num_classes, channels, 1, 1)
    shapes[d + "conv_seg.bias"] = (num_classes,)
    a = "auxiliary_head."
    shapes[a + "convs.0.conv.weight"] = (aux, c // 2, 3, 3)
    shapes |= _bn(a + "convs.0.bn.", aux, True)
    shapes[a + "conv_seg.weight"] = (num_classes, aux, 1, 1)
    shapes[a + "conv_seg.bias"] = (num_classes,)
    return shapes


def fabricate(
    shapes: dict[str, tuple[int, ...]],
    seed: int = 0,
    negative: float = 0.2,
    conv_gain: float = 1.0,
) -> dict[str, Tensor]:
    """Random tensors that keep a deep random network's activations finite.

    Conv weights ~ N(0, conv_gain/fan_in) (2 = He scaling); BN scales of magnitude in (0.5, 1),
    a fraction ``negative`` of them negative; small shifts, variances in (0.5, 1.5); ``gamma``
    0.5 + noise so the attention matters. Values are continuous, so every tensor is distinct
    and can be traced by value.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10_000, shape, generator=g)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * math.sqrt(conv_gain / fan_in)
        elif "gamma" in key:
            state[key] = 0.5 + 0.1 * torch.rand(shape, generator=g)
        elif key.endswith(".weight"):  # BN scale
            magnitude = 0.5 + 0.5 * torch.rand(shape, generator=g)
            sign = torch.where(torch.rand(shape, generator=g) < negative, -1.0, 1.0)
            state[key] = magnitude * sign
        else:  # biases, running means
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


# --------------------------------------------------- where each peer tensor must land (by hand)
def official_target(key: str) -> str:
    """Our key for an official key, written from the official module tree."""
    if key.split(".")[0] in {"conv1", "conv2", "conv3", "bn1", "bn2", "bn3"}:
        return "backbone.stem." + key
    if key.startswith("layer"):
        return "backbone." + key
    renames = {
        "head.conva.0.": "head.conva.conv.",
        "head.conva.1.": "head.conva.norm.",
        "head.convb.0.": "head.convb.conv.",
        "head.convb.1.": "head.convb.norm.",
        "head.bottleneck.0.": "head.bottleneck.conv.",
        "head.bottleneck.1.": "head.bottleneck.norm.",
        "head.bottleneck.3.": "head.classifier.",
        "head.cca.": "head.cca.",
        "dsn.0.": "aux_head.conv.conv.",
        "dsn.1.": "aux_head.conv.norm.",
        "dsn.3.": "aux_head.classifier.",
    }
    for theirs, ours in renames.items():
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    raise AssertionError(f"unplaced official key {key}")


def mmseg_target(key: str) -> str:
    """Our key for an mmseg key, written from the mmseg module tree."""
    stem = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
    parts = key.split(".")
    if key.startswith("backbone.stem."):
        return ".".join(["backbone.stem", stem[parts[2]], *parts[3:]])
    if key.startswith("backbone."):
        return key
    if key == "decode_head.cca.gamma.scale":
        return "head.cca.gamma"
    renames = {
        "decode_head.convs.0.conv.": "head.conva.conv.",
        "decode_head.convs.0.bn.": "head.conva.norm.",
        "decode_head.convs.1.conv.": "head.convb.conv.",
        "decode_head.convs.1.bn.": "head.convb.norm.",
        "decode_head.conv_cat.conv.": "head.bottleneck.conv.",
        "decode_head.conv_cat.bn.": "head.bottleneck.norm.",
        "decode_head.conv_seg.": "head.classifier.",
        "decode_head.cca.": "head.cca.",
        "auxiliary_head.convs.0.conv.": "aux_head.conv.conv.",
        "auxiliary_head.convs.0.bn.": "aux_head.conv.norm.",
        "auxiliary_head.conv_seg.": "aux_head.classifier.",
    }
    for theirs, ours in renames.items():
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    raise AssertionError(f"unplaced mmseg key {key}")


TARGET = {"official": official_target, "mmseg": mmseg_target}


ABN_EPS = 1e-5  # InPlaceABN's default, which the official network uses everywhere


def is_norm_weight(key: str, tensor: Tensor) -> bool:
    """A norm's scale: the only 1-D ``.weight`` in either peer (conv weights are 4-D)."""
    return key.endswith(".weight") and tensor.dim() == 1


def assert_landed_by_value(source: dict[str, Tensor], model: torch.nn.Module, flavour: str) -> None:
    """Every source tensor sits, value for value, on its intended parameter; all else is 0.

    Official norm weights land as InPlaceABN's effective scale ``abs(w) + eps``.
    """
    ours = model.state_dict()
    placed = set()
    for key, tensor in source.items():
        target = TARGET[flavour](key)
        assert target in ours, f"{key} -> {target}: no such parameter"
        expected = tensor.reshape(1) if key.endswith("gamma.scale") else tensor
        if flavour == "official" and is_norm_weight(key, tensor):
            expected = tensor.abs() + ABN_EPS
        assert ours[target].shape == expected.shape, key
        assert torch.equal(ours[target], expected.to(ours[target].dtype)), f"{key} -> {target}"
        placed.add(target)
    for key in set(ours) - placed:  # only the official BN counters have no source
        assert flavour == "official" and key.endswith("num_batches_tracked"), key
        assert ours[key].item() == 0, key


# ---------------------------------------------------------------- independent peer forward
def peer_forward(
    state: dict[str, Tensor],
    flavour: str,
    depth: int,
    x: Tensor,
    recurrence: int = 2,
    *,
    aux: bool = False,
) -> Tensor:
    """The peer network's eval-mode logits at 1/8, from its own key names with functional ops.

    With ``aux`` the auxiliary head's logits instead (official ``dsn``: conv with bias,
    InPlaceABN with LeakyReLU, classifier; mmseg FCNHead: conv, BN, ReLU, classifier).
    """
    official = flavour == "official"
    s = state

    def conv(t: Tensor, p: str, stride: int = 1, dilation: int = 1, pad: int = 0) -> Tensor:
        return F.conv2d(t, s[p + "weight"], s.get(p + "bias"), stride, pad, dilation)

    def bn(t: Tensor, p: str) -> Tensor:
        # InPlaceABN (official): y = (x - mean) / sqrt(var + eps) * (|w| + eps) + b, spelled out
        # rather than through F.batch_norm so that the restatement stays independent.
        mean, var = s[p + "running_mean"], s[p + "running_var"]
        scale = s[p + "weight"].abs() + ABN_EPS if official else s[p + "weight"]
        shape = (1, -1, 1, 1)
        normed = (t - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5)
        return normed * scale.view(shape) + s[p + "bias"].view(shape)

    def head_act(t: Tensor) -> Tensor:
        return F.leaky_relu(t, 0.01) if official else F.relu(t)

    if official:
        stem = [("conv1.", "bn1."), ("conv2.", "bn2."), ("conv3.", "bn3.")]
    else:
        stem = [(f"backbone.stem.{c}.", f"backbone.stem.{b}.") for c, b in ((0, 1), (3, 4), (6, 7))]
    for i, (c, b) in enumerate(stem):
        x = F.relu(bn(conv(x, c, stride=2 if i == 0 else 1, pad=1), b))
    x = F.max_pool2d(x, 3, 2, 1, ceil_mode=official)
    prefix = "" if official else "backbone."
    features = {}
    for stage, (stride, dilation) in enumerate([(1, 1), (2, 1), (1, 2), (1, 4)]):
        for b in range(LAYERS[depth][stage]):
            p = f"{prefix}layer{stage + 1}.{b}."
            st = stride if b == 0 else 1
            d = dilation // 2 if (not official and b == 0 and dilation > 1) else dilation
            out = F.relu(bn(conv(x, p + "conv1."), p + "bn1."))
            out = F.relu(bn(conv(out, p + "conv2.", st, d, d), p + "bn2."))
            out = bn(conv(out, p + "conv3."), p + "bn3.")
            identity = x
            if p + "downsample.0.weight" in s:
                identity = bn(conv(x, p + "downsample.0.", st), p + "downsample.1.")
            x = F.relu(out + identity)
        features[stage + 1] = x
    if aux:
        p = (
            ("dsn.0.", "dsn.1.", "dsn.3.")
            if official
            else (
                "auxiliary_head.convs.0.conv.",
                "auxiliary_head.convs.0.bn.",
                "auxiliary_head.conv_seg.",
            )
        )
        return conv(head_act(bn(conv(features[3], p[0], pad=1), p[1])), p[2])
    if official:
        conva, convb, cat, cls, cca = (
            ("head.conva.0.", "head.conva.1."),
            ("head.convb.0.", "head.convb.1."),
            ("head.bottleneck.0.", "head.bottleneck.1."),
            "head.bottleneck.3.",
            "head.cca.",
        )
        gamma = s["head.cca.gamma"]
    else:
        d = "decode_head."
        conva, convb, cat, cls, cca = (
            (d + "convs.0.conv.", d + "convs.0.bn."),
            (d + "convs.1.conv.", d + "convs.1.bn."),
            (d + "conv_cat.conv.", d + "conv_cat.bn."),
            d + "conv_seg.",
            d + "cca.",
        )
        gamma = s[d + "cca.gamma.scale"]
    top = features[4]
    a = head_act(bn(conv(top, conva[0], pad=1), conva[1]))
    for _ in range(recurrence):
        q, k, v = (conv(a, f"{cca}{n}_conv.") for n in ("query", "key", "value"))
        a = gamma * criss_cross_attention(q, k, v) + a
    a = head_act(bn(conv(a, convb[0], pad=1), convb[1]))
    fused = head_act(bn(conv(torch.cat([top, a], 1), cat[0], pad=1), cat[1]))
    logits = conv(fused, cls)
    return logits  # at 1/8 of the input; ``peer_logits`` upsamples


def peer_logits(
    state: dict[str, Tensor],
    flavour: str,
    depth: int,
    x: Tensor,
    *,
    recurrence: int = 2,
    align_corners: bool,
) -> Tensor:
    """The peer's logits at input size, upsampled as its own evaluation does."""
    coarse = peer_forward(state, flavour, depth, x, recurrence)
    return F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=align_corners)


def fidelity(out: Tensor, expected: Tensor) -> tuple[float, float]:
    """(max |out - expected| / max |expected|, fraction of pixels with the same argmax)."""
    error = ((out - expected).abs().max() / expected.abs().max()).item()
    agreement = (out.argmax(1) == expected.argmax(1)).float().mean().item()
    return error, agreement
