"""Converting the peers' checkpoints: exact peer key names and shapes, strictness, by-value checks.

The peer state dicts are fabricated (``peers.py``, written independently of ``model.convert``)
with random values, so that each tensor can be traced by value, and the converted model is
compared at input size with a restatement of the peer's own forward pass and evaluation
conventions (InPlaceABN's scale, LeakyReLU placement, ``align_corners``, recurrence). Norm
weights are drawn with both signs: a trained InPlaceABN network has negative ones, and that is
where copying them verbatim goes wrong.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from ccnet.model import convert_checkpoint, load_checkpoint
from ccnet.model.checkpoint import CITYSCAPES_CLASSES
from ccnet.model.convert import infer_config, mmseg_config_value, peer_key_map
from ccnet.model.zoo import get_config
from tests.model.peers import (
    TARGET,
    assert_landed_by_value,
    fabricate,
    fidelity,
    is_norm_weight,
    mmseg_keys,
    official_keys,
    official_target,
    peer_forward,
    peer_logits,
)


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
    assert model.config.align_corners == (flavour == "official")
    assert meta["config"]["align_corners"] == (flavour == "official")
    assert meta["config"]["recurrence"] == 2
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


@pytest.mark.parametrize("recurrence", [1, 2])
def test_converted_official_model_computes_the_official_network(recurrence: int) -> None:
    """InPlaceABN scale (both signs), LeakyReLU placement, R, align_corners=True, input size."""
    source = fabricate(official_keys(50, 5, width=8, head=24, aux=16), seed=1)
    assert (torch.cat([v for k, v in source.items() if is_norm_weight(k, v)]) < 0).any()
    model, meta = convert_checkpoint(
        source, "official", classes=list("abcde"), recurrence=recurrence
    )
    assert (model.config.recurrence, model.recurrence, model.config.align_corners) == (
        recurrence,
        recurrence,
        True,
    )
    assert meta["provenance"]["peer_conventions"]["align_corners"] == "official convention"
    x = torch.randn(2, 3, 65, 79)  # not a multiple of 8: the two grids differ everywhere
    with torch.no_grad():
        expected = peer_logits(source, "official", 50, x, recurrence=recurrence, align_corners=True)
        out = model(x)
    error, agreement = fidelity(out, expected)
    assert error < 1e-4 and agreement == 1.0, (recurrence, error, agreement)


@pytest.mark.parametrize("flavour", ["official", "mmseg"])
def test_converted_auxiliary_head_computes_the_peer_one(flavour: str) -> None:
    """The auxiliary head too (training only): official LeakyReLU after its InPlaceABN."""
    if flavour == "official":
        source = fabricate(official_keys(50, 5, width=8, head=24, aux=16), seed=6)
    else:
        source = fabricate(mmseg_keys(50, 5, width=8, channels=24, aux=16), seed=6)
    model, _ = convert_checkpoint(source, flavour, classes=list("abcde"))
    x = torch.randn(1, 3, 65, 79)
    with torch.no_grad():
        expected = peer_forward(source, flavour, 50, x, aux=True)
        out = model.aux_head(model.backbone(x)["layer3"])  # eval mode: no dropout
    error, agreement = fidelity(out, expected)
    assert error < 1e-4 and agreement == 1.0, (flavour, error, agreement)


@pytest.mark.parametrize("align_corners", [False, True])
def test_converted_mmseg_model_computes_the_mmseg_network(align_corners: bool) -> None:
    source = fabricate(mmseg_keys(50, 5, width=8, channels=24, aux=16), seed=1)
    model, meta = convert_checkpoint(
        source, "mmseg", classes=list("abcde"), align_corners=align_corners
    )
    assert model.config.align_corners is align_corners
    assert meta["provenance"]["peer_conventions"]["align_corners"] == "requested"
    x = torch.randn(2, 3, 65, 79)
    with torch.no_grad():
        expected = peer_logits(source, "mmseg", 50, x, align_corners=align_corners)
        out = model(x)
    error, agreement = fidelity(out, expected)
    assert error < 1e-4 and agreement == 1.0, (align_corners, error, agreement)


def test_conventions_matter_at_input_size() -> None:
    """The checks above can fail: the other grid, or norm weights copied verbatim, is far off."""
    source = fabricate(official_keys(50, 5, width=8, head=24, aux=16), seed=1)
    model, _ = convert_checkpoint(source, "official", classes=list("abcde"))
    x = torch.randn(1, 3, 65, 79)
    with torch.no_grad():
        official = peer_logits(source, "official", 50, x, align_corners=True)
        resized = model.resize_logits(peer_forward(source, "official", 50, x), (65, 79))
        assert fidelity(resized, official)[0] < 1e-4  # the model's own resize: True
        other_grid = peer_logits(source, "official", 50, x, align_corners=False)
        assert fidelity(other_grid, official)[0] > 1e-3
        verbatim = {
            official_target(k): v for k, v in source.items() if is_norm_weight(k, v)
        }  # what a converter without the InPlaceABN fold would load
        model.load_state_dict({**model.state_dict(), **verbatim})
        assert fidelity(model(x), official)[0] > 1e-2


def test_mmseg_conventions_come_from_the_embedded_config() -> None:
    source = fabricate(mmseg_keys(50, 3, width=8, channels=16, aux=16), seed=4)
    # mmseg 0.x: meta["config"] is the config's pretty text (Python syntax, never executed)
    text = (
        "norm_cfg = dict(type='SyncBN', requires_grad=True)\n"
        "model = dict(\n    type='EncoderDecoder',\n"
        "    decode_head=dict(type='CCHead', recurrence=1, align_corners=True,\n"
        "        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False)),\n"
        "    auxiliary_head=dict(type='FCNHead', align_corners=True))\n"
    )
    model, meta = convert_checkpoint({"meta": {"config": text}, "state_dict": source}, "mmseg")
    assert (model.config.align_corners, model.config.recurrence) == (True, 1)
    conventions = meta["provenance"]["peer_conventions"]
    assert conventions == {
        "align_corners": "checkpoint config",
        "recurrence": "checkpoint config",
        "inplace_abn_scale": None,
    }
    # mmseg 1.x (mmengine): meta["cfg"]; a dict config works the same way
    config = {"model": {"decode_head": {"align_corners": False}}}
    model, _ = convert_checkpoint({"meta": {"cfg": config}, "state_dict": source}, "mmseg")
    assert (model.config.align_corners, model.config.recurrence) == (False, 2)
    # the checkpoint's word beats a contradicting request, loudly
    with pytest.raises(
        ValueError, match=r"align_corners=False was asked for.*says align_corners=True"
    ):
        convert_checkpoint(
            {"meta": {"config": text}, "state_dict": source}, "mmseg", align_corners=False
        )
    # text that does not parse still yields the decode head's value
    broken = "model = dict(decode_head=dict(type='CCHead', align_corners=True), oops=("
    assert mmseg_config_value(broken, "align_corners") is True
    assert mmseg_config_value("model = dict(backbone=dict(depth=50))", "align_corners") is None


def test_official_conversion_refuses_a_contradicting_grid_and_bad_recurrence() -> None:
    source = fabricate(official_keys(50, 5, width=8, head=24, aux=16), seed=1)
    with pytest.raises(ValueError, match="align_corners=False was asked for"):
        convert_checkpoint(source, "official", align_corners=False)
    with pytest.raises(ValueError, match="recurrence must be an integer >= 1"):
        convert_checkpoint(source, "official", recurrence=0)


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


def test_convert_cli_records_recurrence_and_grid(
    small_mmseg: dict[str, Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ccnet.cli as ccnet_cli

    src = tmp_path / "mmseg.pth"
    torch.save({"state_dict": small_mmseg}, src)
    dst = tmp_path / "ours.pt"
    argv = ["convert", str(src), "--from", "mmseg", "-o", str(dst), "--recurrence", "1"]
    assert ccnet_cli.main([*argv, "--align-corners", "true"]) == 0
    assert "R=1, align_corners=True" in capsys.readouterr().out
    model, meta = load_checkpoint(dst)
    assert (meta["config"]["recurrence"], meta["config"]["align_corners"]) == (1, True)
    assert (model.recurrence, model.align_corners) == (1, True)
    # a request the checkpoint contradicts: one line naming the file, exit 2
    torch.save(
        {
            "meta": {"config": "model = dict(decode_head=dict(recurrence=2))"},
            "state_dict": small_mmseg,
        },
        src,
    )
    assert ccnet_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and "recurrence=1 was asked for" in err
