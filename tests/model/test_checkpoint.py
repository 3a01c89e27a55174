"""Our checkpoint format: round trips, atomic writes, clear errors, no unpickling of code."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import ccnet.model.checkpoint as checkpoint_module
from ccnet.model import CCNet3D, build_model, load_checkpoint, save_checkpoint
from ccnet.model.checkpoint import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    complete_meta,
    default_class_names,
    default_palette,
    read_checkpoint,
)
from ccnet.model.zoo import OFFICIAL_NORMALIZATION, get_config

CODE_RAN: list[str] = []


def _record_execution(tag: str) -> str:
    CODE_RAN.append(tag)
    return tag


class _Payload:
    """Unpickling this calls ``_record_execution``: a stand-in for a malicious pickle."""

    def __reduce__(self) -> tuple:
        return (_record_execution, ("executed",))


@pytest.fixture
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("ccnet-tiny", num_classes=3)
    with torch.no_grad():
        model.head.cca.gamma.fill_(0.3)
        for module in model.modules():  # non-trivial running statistics
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
    return model.eval()


META = {
    "classes": ["background", "road", "car"],
    "palette": [[0, 0, 0], [128, 64, 128], [0, 0, 142]],
    "provenance": {"source": "unit test", "training": {"epochs": 2, "lr": 0.01}},
}


def test_round_trip_restores_weights_and_meta(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    written = save_checkpoint(tiny, META, path)
    model, meta = load_checkpoint(path)
    assert meta == written
    assert meta["classes"] == META["classes"]
    assert meta["palette"] == META["palette"]
    assert meta["provenance"]["training"] == {"epochs": 2, "lr": 0.01}
    assert meta["provenance"]["torch_version"] == torch.__version__
    assert "created" in meta["provenance"]
    assert meta["config"] == tiny.config.to_dict()
    assert meta["normalization"] == meta["config"]["normalization"]
    json.dumps(meta)  # plain data only
    assert model.config == tiny.config
    assert not model.training
    original, restored = tiny.state_dict(), model.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    x = torch.randn(1, 3, 33, 45)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tiny(x), rtol=0, atol=0)


def test_round_trip_video_model(tmp_path: Path) -> None:
    model = build_model("ccnet3d-tiny", num_classes=2)
    save_checkpoint(model, None, tmp_path / "v.pt")
    loaded, meta = load_checkpoint(tmp_path / "v.pt")
    assert isinstance(loaded, CCNet3D)
    assert meta["config"]["video"] is True and meta["config"]["clip_length"] == 4
    assert meta["classes"] == ["class_0", "class_1"]


def test_save_is_atomic_and_leaves_no_temporary(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(tiny, META, path)
    assert sorted(os.listdir(path.parent)) == ["model.pt"]
    save_checkpoint(tiny, META, path)  # overwrite in place
    assert sorted(os.listdir(path.parent)) == ["model.pt"]


def test_failed_save_keeps_the_old_file(
    tiny: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(tiny, META, path)
    before = path.read_bytes()

    def broken_save(obj: object, handle: object) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny, META, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]


def test_load_uses_weights_only(
    tiny: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(tiny, META, path)
    calls = []
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "load", spy)
    load_checkpoint(path)
    assert calls and all(c.get("weights_only") is True for c in calls)
    assert all(c.get("map_location") == "cpu" for c in calls)


def test_pickled_code_is_refused_and_never_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "ccnet-checkpoint", "version": 1, "payload": _Payload()}, path)
    CODE_RAN.clear()
    with pytest.raises(ValueError, match=r"evil\.pt") as info:
        load_checkpoint(path)
    assert "plain data" in str(info.value)
    assert CODE_RAN == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a checkpoint at all", pickle.dumps([1, 2, 3], protocol=2)[:5]],
    ids=["empty", "text", "truncated-pickle"],
)
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"corrupt\.pt.*corrupt or not a PyTorch") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value)  # torch's advice to disable it is not ours


def test_truncated_checkpoint(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    save_checkpoint(tiny, META, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.pt"):
        load_checkpoint(path)


def test_foreign_files(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"epoch": 3, "lr": 0.1}, other)
    with pytest.raises(ValueError, match=r"other\.pt: not a ccnet-checkpoint file$"):
        load_checkpoint(other)
    bare = tmp_path / "bare.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bare)
    with pytest.raises(ValueError, match="convert_checkpoint"):
        load_checkpoint(bare)


def test_newer_version_is_refused(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "new.pt"
    torch.save(
        {"format": "ccnet-checkpoint", "version": 2, "state_dict": {}, "meta": {"config": {}}},
        path,
    )
    with pytest.raises(ValueError, match="version 2 is newer"):
        load_checkpoint(path)


def test_weights_not_matching_config(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(tiny, META, path)
    payload = read_checkpoint(path)
    del payload["state_dict"]["head.cca.gamma"]
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"m\.pt: .*missing keys: head\.cca\.gamma$"):
        load_checkpoint(path)
    payload["state_dict"]["head.cca.gamma"] = torch.zeros(2)
    payload["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(payload, path)
    with pytest.raises(
        ValueError, match=r"unexpected keys: extra\.weight; .*gamma \(2,\) vs \(1,\)"
    ):
        load_checkpoint(path)


def test_meta_validation(tiny: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="classes"):
        save_checkpoint(tiny, {"classes": ["a", "b"]}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="palette"):
        save_checkpoint(tiny, {"palette": [[0, 0, 0]] * 2 + [[0, 0, 256]]}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"\['provenance'\]\['when'\].*datetime"):
        save_checkpoint(tiny, {"provenance": {"when": datetime.datetime.now()}}, tmp_path / "x.pt")
    bare = build_model("ccnet-tiny", num_classes=3)
    bare.config = None
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(bare, {}, tmp_path / "x.pt")
    other = build_model("ccnet-tiny", num_classes=4).config.to_dict()
    with pytest.raises(ValueError, match="4 classes"):
        save_checkpoint(tiny, {"config": other}, tmp_path / "x.pt")
    deeper = dataclasses.replace(tiny.config, depth=34).to_dict()
    with pytest.raises(ValueError, match="does not describe the model: missing keys: backbone"):
        save_checkpoint(tiny, {"config": deeper}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="classes"):
        save_checkpoint(tiny, {"classes": "abc"}, tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


def test_normalization_in_meta_overrides_config(tiny: torch.nn.Module) -> None:
    meta = complete_meta(tiny, {"normalization": OFFICIAL_NORMALIZATION})
    assert meta["normalization"]["channel_order"] == "BGR"
    assert meta["config"]["normalization"] == meta["normalization"]


def test_default_classes_and_palette() -> None:
    assert default_class_names(19) == list(CITYSCAPES_CLASSES)
    assert default_class_names(3) == ["class_0", "class_1", "class_2"]
    assert default_palette(list(CITYSCAPES_CLASSES)) == [list(c) for c in CITYSCAPES_PALETTE]
    assert default_palette(list(CITYSCAPES_CLASSES))[0] == [128, 64, 128]  # road
    palette = default_palette(300)
    assert palette == default_palette(300)  # deterministic
    assert len({tuple(c) for c in palette}) == 300
    assert all(0 <= v <= 255 for c in palette for v in c)
    assert [0, 0, 0] not in palette
    assert default_palette(2) == [[128, 0, 0], [0, 128, 0]]


def test_meta_accepts_config_dataclass(tiny: torch.nn.Module) -> None:
    meta = complete_meta(tiny, {"config": tiny.config})
    assert meta["config"] == tiny.config.to_dict()
    assert meta["config"]["name"] == get_config("ccnet-tiny").name


def test_align_corners_is_recorded_and_old_checkpoints_load_as_false(
    tiny: torch.nn.Module, tmp_path: Path
) -> None:
    corner = build_model(
        dataclasses.replace(get_config("ccnet-tiny"), align_corners=True), num_classes=3
    )
    corner.load_state_dict(tiny.state_dict())
    path = tmp_path / "corner.pt"
    assert save_checkpoint(corner, META, path)["config"]["align_corners"] is True
    loaded, _ = load_checkpoint(path)
    assert loaded.align_corners is True and loaded.config.align_corners is True
    x = torch.randn(1, 3, 29, 37)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), corner.eval()(x), rtol=0, atol=0)
        assert not torch.allclose(loaded(x), tiny(x), atol=1e-4)  # the grid changes the logits

    # meta that says otherwise than the model does is refused
    with pytest.raises(ValueError, match="align_corners=False but the model upsamples"):
        save_checkpoint(corner, {**META, "config": tiny.config.to_dict()}, tmp_path / "x.pt")

    # a checkpoint written before the field existed: no "align_corners" in its config
    path = tmp_path / "old.pt"
    save_checkpoint(tiny, META, path)
    payload = torch.load(path, weights_only=True)
    del payload["meta"]["config"]["align_corners"]
    torch.save(payload, path)
    old, meta = load_checkpoint(path)
    assert "align_corners" not in meta["config"]
    assert old.align_corners is False and old.config.align_corners is False
