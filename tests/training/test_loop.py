"""The training loop: exact resume, the optional losses, CCNet3D on clips, run-folder safety."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from model import load_checkpoint
from model.checkpoint import load_plain
from training.config import TrainConfig
from training.loop import train
from training.synth import generate


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    generate(root, "images", 6, n_val=2, seed=0, size=32, progress=False)
    return root


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    generate(root, "clips", 2, n_val=1, seed=0, size=32, frames=4, progress=False)
    return root


def _config(data: Path, out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        model="ccnet-tiny",
        data=str(data),
        out=str(out),
        iterations=5,
        batch_size=2,
        crop_size=32,
        scale_min=0.75,
        scale_max=1.25,
        jitter=0.2,
        lr=0.01,
        warmup_iterations=2,
        loss="ohem",
        ohem_min_kept=64,
        cc_loss=True,
        val_every=0,
        checkpoint_every=2,
        tensorboard=False,
        progress=False,
        seed=3,
    )
    return dataclasses.replace(base, **changes)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_plain(path)["state_dict"]  # type: ignore[index]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    scenes: Path, tmp_path, accumulate: int
) -> None:
    # OHEM, category-consistent loss, jitter, dropout, warm-up, bf16 autocast all active
    settings = {"accumulate": accumulate, "batch_size": 2 // accumulate}
    straight = train(_config(scenes, tmp_path / "a", **settings), command="test")
    assert straight["iterations"] == 5
    partial = train(_config(scenes, tmp_path / "b", **settings), stop_at=3, command="test")
    assert partial["iterations"] == 3  # stopped after step 3; last checkpoint is step 2
    assert not (tmp_path / "b" / "final.pt").exists()
    resumed = train(_config(scenes, tmp_path / "b", **settings), resume=True, command="test")
    assert resumed["resumed_from"] == 2 and resumed["steps_this_run"] == 3
    a, b = _weights(tmp_path / "a" / "final.pt"), _weights(tmp_path / "b" / "final.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit-exact
    assert resumed["val"]["mIoU"] == straight["val"]["mIoU"]
    # a sanity check that the comparison can fail: training changed the weights
    initial = _weights(tmp_path / "a" / "checkpoints" / "iter_000004" / "model.pt")
    assert any(not torch.equal(initial[n], a[n]) for n in a if a[n].is_floating_point())


def test_checkpoints_are_self_describing_and_state_loads_weights_only(scenes, tmp_path) -> None:
    config = _config(
        scenes, tmp_path, iterations=2, cc_loss=False, head_lr_mult=10.0, attention_lr_mult=2.0
    )
    train(config, command="ccnet train …")
    _, meta = load_checkpoint(tmp_path / "final.pt")
    assert meta["classes"][0] == "background"
    assert meta["provenance"]["command"] == "ccnet train …"
    assert meta["provenance"]["iteration"] == 2
    assert meta["provenance"]["val_mIoU"] is not None
    latest = (tmp_path / "checkpoints" / "latest").read_text().strip()
    state = torch.load(tmp_path / "checkpoints" / latest / "state.pt", weights_only=True)
    assert state["iteration"] == 2 and isinstance(state["rng"][0]["torch"], torch.Tensor)
    backbone, head, attention = state["optimizer"]["param_groups"]
    assert head["initial_lr"] == pytest.approx(10 * backbone["initial_lr"])
    assert attention["initial_lr"] == pytest.approx(20 * backbone["initial_lr"])
    assert (tmp_path / "best.pt").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images_per_second"] > 0


def test_existing_run_needs_resume_and_resume_refuses_changed_settings(scenes, tmp_path) -> None:
    train(_config(scenes, tmp_path, iterations=2, cc_loss=False), command="test")
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        train(_config(scenes, tmp_path, iterations=2, cc_loss=False), command="test")
    with pytest.raises(ValueError, match=r"cannot resume with changed settings \(lr"):
        train(_config(scenes, tmp_path, iterations=2, cc_loss=False, lr=0.5), resume=True)


def test_ccnet3d_trains_on_clips_initialised_from_a_2d_checkpoint(scenes, clips, tmp_path) -> None:
    train(_config(scenes, tmp_path / "2d", iterations=1, cc_loss=False), command="test")
    summary = train(
        _config(
            clips,
            tmp_path / "3d",
            model="ccnet3d-tiny",
            init=str(tmp_path / "2d" / "final.pt"),
            clip_length=3,
            iterations=2,
        ),
        command="test",
    )
    assert summary["val"]["mIoU"] is not None
    model, meta = load_checkpoint(tmp_path / "3d" / "final.pt")
    assert meta["config"]["video"] is True
    source, _ = load_checkpoint(tmp_path / "2d" / "final.pt")
    # the backbone came from the 2D model; the 3D attention took its 1×1 kernels
    assert meta["provenance"]["train_config"]["init"].endswith("final.pt")
    assert model.head.cca.query_conv.weight.shape[-3:] == (1, 1, 1)
    assert source.head.cca.query_conv.weight.shape[-2:] == (1, 1)
