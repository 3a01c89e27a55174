"""Converting the peers' checkpoints: exact peer key names and shapes, strictness, by-value checks.

The peer state dicts are fabricated here from the peers' architectures (written independently of
``model.convert``), with random values, so that each tensor can be traced by value. A functional
re-implementation of each peer network, driven only by the peer's key names, checks that the
converted model computes what the peer's network would.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from model import convert_checkpoint, load_checkpoint
from model.cca import criss_cross_attention
from model.checkpoint import CITYSCAPES_CLASSES
from model.convert import infer_config, peer_key_map
from model.zoo import get_config

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


def fabricate(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, Tensor]:
    """Random tensors that keep a deep random network's activations finite.

    Conv weights ~ N(0, 1/fan_in); BN scales in (0.5, 1), small shifts, variances in (0.5, 1.5);
    ``gamma`` 0.5 + noise so the attention matters. Values are continuous, so every tensor is
    distinct and can be traced by value.
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
            state[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        elif "gamma" in key:
            state[key] = 0.5 + 0.1 * torch.rand(shape, generator=g)
        elif key.endswith(".weight"):  # BN scale
            state[key] = 0.5 + 0.5 * torch.rand(shape, generator=g)
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


def assert_landed_by_value(source: dict[str, Tensor], model: torch.nn.Module, flavour: str) -> None:
    """Every source tensor sits, value for value, on its intended parameter; all else is 0."""
    ours = model.state_dict()
    placed = set()
    for key, tensor in source.items():
        target = TARGET[flavour](key)
        assert target in ours, f"{key} -> {target}: no such parameter"
        expected = tensor.reshape(1) if key.endswith("gamma.scale") else tensor
        assert ours[target].shape == expected.shape, key
        assert torch.equal(ours[target], expected.to(ours[target].dtype)), f"{key} -> {target}"
        placed.add(target)
    for key in set(ours) - placed:  # only the official BN counters have no source
        assert flavour == "official" and key.endswith("num_batches_tracked"), key
        assert ours[key].item() == 0, key


# ---------------------------------------------------------------- independent peer forward
def peer_forward(state: dict[str, Tensor], flavour: str, depth: int, x: Tensor) -> Tensor:
    """The peer network's eval-mode logits, computed from its own key names with functional ops."""
    official = flavour == "official"
    s = state

    def conv(t: Tensor, p: str, stride: int = 1, dilation: int = 1, pad: int = 0) -> Tensor:
        return F.conv2d(t, s[p + "weight"], s.get(p + "bias"), stride, pad, dilation)

    def bn(t: Tensor, p: str) -> Tensor:
        stats = s[p + "running_mean"], s[p + "running_var"]
        return F.batch_norm(t, *stats, s[p + "weight"], s[p + "bias"], training=False, eps=1e-5)

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
    for _ in range(2):
        q, k, v = (conv(a, f"{cca}{n}_conv.") for n in ("query", "key", "value"))
        a = gamma * criss_cross_attention(q, k, v) + a
    a = head_act(bn(conv(a, convb[0], pad=1), convb[1]))
    fused = head_act(bn(conv(torch.cat([top, a], 1), cat[0], pad=1), cat[1]))
    logits = conv(fused, cls)
    return logits  # at 1/8 of the input; the caller upsamples


# -------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    ("flavour", "depth", "keys"),
    [
        ("official", 101, official_keys(101, 19)),
        ("mmseg", 50, mmseg_keys(50, 19)),
    ],
    ids=["official-r101", "mmseg-r50"],
)
def test_full_size_conversion_places_every_tensor(
    flavour: str, depth: int, keys: dict[str, tuple[int, ...]]
) -> None:
    source = fabricate(keys)
    model, meta = convert_checkpoint(source, flavour)
    assert_landed_by_value(source, model, flavour)
    assert model.config == get_config(f"ccnet-r{depth}-{flavour}")  # the zoo's peer layout
    assert (model.config.depth, model.config.width, model.config.flavour) == (depth, 64, flavour)
    assert model.head.cca.gamma.shape == (1,)
    assert meta["classes"] == list(CITYSCAPES_CLASSES)
    assert meta["palette"][0] == [128, 64, 128]
    norm = meta["normalization"]
    if flavour == "official":
        assert norm["channel_order"] == "BGR" and norm["std"] == [1.0, 1.0, 1.0]
        assert norm["mean"] == pytest.approx([104.00698793, 116.66876762, 122.67891434])
    else:
        assert norm["channel_order"] == "RGB"
        assert norm["mean"] == [123.675, 116.28, 103.53]
        assert norm["std"] == [58.395, 57.12, 57.375]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 45))
    assert out.shape == (1, 19, 33, 45)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("flavour", ["official", "mmseg"])
def test_converted_model_computes_the_peer_network(flavour: str) -> None:
    keys = (
        official_keys(50, 5, width=8, head=24, aux=16)
        if flavour == "official"
        else mmseg_keys(50, 5, width=8, channels=24, aux=16)
    )
    source = fabricate(keys, seed=1)
    model, _ = convert_checkpoint(source, flavour, classes=list("abcde"))
    x = torch.randn(2, 3, 65, 79)
    with torch.no_grad():
        expected = peer_forward(source, flavour, 50, x)
        expected = F.interpolate(expected, size=(65, 79), mode="bilinear", align_corners=False)
        out = model(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flavour", ["official", "mmseg"])
def test_key_map_is_a_bijection_onto_the_peer_keys(flavour: str) -> None:
    keys = official_keys(101, 19) if flavour == "official" else mmseg_keys(101, 19)
    config = infer_config(fabricate_shapes_only(keys), flavour)
    key_map = peer_key_map(config)
    peer = set(key_map.values())
    assert len(peer) == len(key_map), "two parameters map to one peer key"
    if flavour == "official":
        counters = {k for k in peer if k.endswith("num_batches_tracked")}
        assert peer - counters == set(keys)
    else:
        assert peer == set(keys)
    target = TARGET[flavour]
    for ours, theirs in key_map.items():
        if theirs in keys:
            assert target(theirs) == ours


def fabricate_shapes_only(keys: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Tensors with the right shapes on the meta device (infer_config only reads shapes)."""
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def test_infer_config_reads_the_architecture() -> None:
    config = infer_config(fabricate_shapes_only(official_keys(101, 21)), "official")
    assert (config.depth, config.width, config.num_classes) == (101, 64, 21)
    assert (config.head_channels, config.inter_channels, config.aux_channels) == (512, None, 512)
    config = infer_config(
        fabricate_shapes_only(mmseg_keys(50, 7, width=8, channels=24, aux=16)), "mmseg"
    )
    assert (config.depth, config.width, config.num_classes) == (50, 8, 7)
    assert (config.head_channels, config.inter_channels, config.aux_channels) == (24, 24, 16)
    shapes = {k: v for k, v in mmseg_keys(50, 7, width=8).items() if "auxiliary" not in k}
    assert infer_config(fabricate_shapes_only(shapes), "mmseg").aux_channels is None


@pytest.fixture(scope="module")
def small_official() -> dict[str, Tensor]:
    return fabricate(official_keys(50, 19, width=8, head=16, aux=16), seed=2)


@pytest.fixture(scope="module")
def small_mmseg() -> dict[str, Tensor]:
    return fabricate(mmseg_keys(50, 3, width=8, channels=16, aux=16), seed=3)


@pytest.mark.parametrize("flavour", ["official", "mmseg"])
def test_missing_key_fails_naming_it(
    flavour: str, small_official: dict[str, Tensor], small_mmseg: dict[str, Tensor]
) -> None:
    source = dict(small_official if flavour == "official" else small_mmseg)
    victim = (
        "layer3.2.bn2.running_var" if flavour == "official" else "decode_head.cca.key_conv.bias"
    )
    del source[victim]
    with pytest.raises(ValueError, match=f"missing keys: {re.escape(victim)}$"):
        convert_checkpoint(source, flavour)


@pytest.mark.parametrize("flavour", ["official", "mmseg"])
def test_extra_key_fails_naming_it(
    flavour: str, small_official: dict[str, Tensor], small_mmseg: dict[str, Tensor]
) -> None:
    source = dict(small_official if flavour == "official" else small_mmseg)
    source["criterion.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match=r"unexpected keys: criterion\.weight$"):
        convert_checkpoint(source, flavour)


def test_shape_mismatch_fails_with_shapes(small_official: dict[str, Tensor]) -> None:
    source = dict(small_official)
    source["head.cca.value_conv.bias"] = torch.zeros(5)
    with pytest.raises(
        ValueError,
        match=r"head\.cca\.value_conv\.bias \(5,\) vs head\.cca\.value_conv\.bias \(64,\)",
    ):
        convert_checkpoint(source, "official")


def test_not_a_peer_checkpoint() -> None:
    with pytest.raises(ValueError, match="layer1"):
        convert_checkpoint({"foo.weight": torch.zeros(1)}, "official")
    with pytest.raises(ValueError, match="flavour"):
        convert_checkpoint({"foo.weight": torch.zeros(1)}, "caffe")  # type: ignore[arg-type]
    shapes = official_keys(50, 19, width=8)
    source = fabricate_shapes_only(
        {k: v for k, v in shapes.items() if not k.startswith("layer3.5.")}
    )
    with pytest.raises(ValueError, match=r"bottleneck blocks \(3, 4, 5, 3\)"):
        convert_checkpoint(source, "official")


def test_wrapped_files_and_meta_classes(
    small_official: dict[str, Tensor], small_mmseg: dict[str, Tensor], tmp_path: Path
) -> None:
    # DataParallel prefix inside {"state_dict": ...}, read from a file, written to ours.
    src = tmp_path / "official.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in small_official.items()}}, src)
    dst = tmp_path / "out" / "converted.pt"
    model, meta = convert_checkpoint(src, "official", dst)
    assert_landed_by_value(small_official, model, "official")
    assert meta["provenance"]["source_file"] == "official.pth"
    assert meta["classes"] == list(CITYSCAPES_CLASSES)
    loaded, loaded_meta = load_checkpoint(dst)
    assert loaded_meta == meta
    x = torch.randn(1, 3, 33, 45)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)

    # mmseg 0.x layout: classes and palette in meta
    src = tmp_path / "mmseg.pth"
    peer_meta = {"CLASSES": ("sky", "tree", "road"), "PALETTE": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}
    torch.save({"meta": peer_meta, "state_dict": small_mmseg}, src)
    _, meta = convert_checkpoint(src, "mmseg")
    assert meta["classes"] == ["sky", "tree", "road"]
    assert meta["palette"] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    _, meta = convert_checkpoint(src, "mmseg", classes=["a", "b", "c"])
    assert meta["classes"] == ["a", "b", "c"]
    assert meta["palette"] != [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    # no recorded classes, not 19 outputs
    _, meta = convert_checkpoint(small_mmseg, "mmseg")
    assert meta["classes"] == ["class_0", "class_1", "class_2"]


def test_missing_or_unreadable_source_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        convert_checkpoint(tmp_path / "absent.pth", "mmseg")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt\.pth: corrupt or not a PyTorch checkpoint"):
        convert_checkpoint(corrupt, "official")
    objects = tmp_path / "objects.pth"
    torch.save({"state_dict": {}, "optimizer": torch.optim.SGD([torch.zeros(1)], lr=0.1)}, objects)
    with pytest.raises(ValueError, match=r"objects\.pth: refusing to load.*torch\.optim"):
        convert_checkpoint(objects, "mmseg")
