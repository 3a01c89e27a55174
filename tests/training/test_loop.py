"""The training loop: exact resume, the optional losses, CCNet3D on clips, run-folder safety."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ccnet.model import load_checkpoint
from ccnet.model.checkpoint import load_plain
from ccnet.training.config import TrainConfig
from ccnet.training.loop import train
from ccnet.training.synth import generate


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
    assert partial["iterations"] == 3  # stopped after step 3, off the --checkpoint-every grid
    assert not (tmp_path / "b" / "final.pt").exists()
    # the run ended on a checkpoint of the step it stopped at, not the earlier one of step 2
    latest = tmp_path / "b" / "checkpoints" / "latest"
    assert latest.read_text().strip() == "iter_000003"
    resumed = train(_config(scenes, tmp_path / "b", **settings), resume=True, command="test")
    assert resumed["resumed_from"] == 3 and resumed["steps_this_run"] == 2
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


def _ccnet3d_from_2d(scenes: Path, clips: Path, tmp_path: Path, **changes: object) -> TrainConfig:
    """Train a 2D model for one step in ``tmp_path/2d``; the config of a CCNet3D run
    initialised from it (3-frame clips, in ``tmp_path/3d``) with ``changes``."""
    train(_config(scenes, tmp_path / "2d", iterations=1, cc_loss=False), command="test")
    return _config(
        clips,
        tmp_path / "3d",
        model="ccnet3d-tiny",
        init=str(tmp_path / "2d" / "final.pt"),
        clip_length=3,
        **changes,
    )


def test_ccnet3d_trains_on_clips_initialised_from_a_2d_checkpoint(scenes, clips, tmp_path) -> None:
    summary = train(_ccnet3d_from_2d(scenes, clips, tmp_path, iterations=2), command="test")
    assert summary["val"]["mIoU"] is not None
    model, meta = load_checkpoint(tmp_path / "3d" / "final.pt")
    assert meta["config"]["video"] is True
    source, _ = load_checkpoint(tmp_path / "2d" / "final.pt")
    # the backbone came from the 2D model; the 3D attention took its 1×1 kernels
    assert meta["provenance"]["train_config"]["init"].endswith("final.pt")
    assert model.head.cca.query_conv.weight.shape[-3:] == (1, 1, 1)
    assert source.head.cca.query_conv.weight.shape[-2:] == (1, 1)


def test_the_3d_recipe_flags_start_gamma_and_drop_frames(scenes, clips, tmp_path) -> None:
    settings = {"attention_gamma_init": 0.7, "frame_drop": 0.3}
    config = _ccnet3d_from_2d(
        scenes,
        clips,
        tmp_path,
        iterations=1,
        lr=0.0,  # no step moves gamma: what is saved is where it started
        cc_loss=False,
        **settings,
    )
    source, _ = load_checkpoint(tmp_path / "2d" / "final.pt")
    assert float(source.head.cca.gamma.detach()) != 0.7
    train(config, command="test")
    model, meta = load_checkpoint(tmp_path / "3d" / "final.pt")
    assert float(model.head.cca.gamma.detach()) == pytest.approx(0.7)
    recorded = meta["provenance"]["train_config"]
    assert {k: recorded[k] for k in settings} == settings
    with pytest.raises(ValueError, match="frame_drop"):
        _config(clips, tmp_path / "x", frame_drop=1.0)


# --------------------------------------------------------------------------- kill-safe runs

ROOT = Path(__file__).resolve().parents[2]
_KILL_FLAGS = [
    "--model", "ccnet-tiny", "--iterations", "24", "--batch-size", "1", "--accumulate", "2",
    "--crop-size", "32", "--loss", "ohem", "--ohem-min-kept", "64", "--cc-loss", "--jitter",
    "0.2", "--warmup-iterations", "3", "--val-every", "7", "--checkpoint-every", "1000",
    "--no-tensorboard", "--device", "cpu", "--threads", "1", "--seed", "5",
]  # fmt: skip


def _ccnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "ccnet", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _kill_during_training(command: list[str], signum: int, after_step: int) -> tuple[int, str]:
    """Start ``command``, send ``signum`` once its progress bar shows ``after_step``, and
    return its exit status and stderr."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    seen = b""
    signalled = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        chunk = process.stderr.read1(4096)  # type: ignore[attr-defined]
        if not chunk:
            break
        seen += chunk
        steps = [int(m) for m in re.findall(rb"(\d+)/24 \[", seen)]
        if not signalled and steps and max(steps) >= after_step:
            process.send_signal(signum)
            signalled = True
    process.wait(timeout=max(1.0, deadline - time.monotonic()))
    assert signalled, seen.decode(errors="replace")[-2000:]
    return process.returncode, seen.decode(errors="replace")


@pytest.fixture(scope="module")
def straight_run(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run, in its own process like the interrupted ones."""
    out = tmp_path_factory.mktemp("straight")
    done = subprocess.run(
        _ccnet("train", "--data", str(scenes), *_KILL_FLAGS, "--out", str(out), "--no-progress"),
        cwd=ROOT, env=_env(), capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize(("signum", "after_step"), [(signal.SIGTERM, 3), (signal.SIGINT, 8)])
def test_a_signal_at_any_step_writes_a_checkpoint_and_resume_is_exact(
    scenes: Path, straight_run: Path, tmp_path: Path, signum: int, after_step: int
) -> None:
    straight, killed = straight_run, tmp_path / "killed"
    common = ["train", "--data", str(scenes), *_KILL_FLAGS]

    status, stderr = _kill_during_training(
        _ccnet(*common, "--out", str(killed)), signum, after_step
    )
    assert status == 128 + signum, stderr[-2000:]
    stopped = re.search(r"stopped by (\w+) after step (\d+)", stderr)
    assert stopped and stopped.group(1) == signal.Signals(signum).name, stderr[-2000:]
    step = int(stopped.group(2))
    assert after_step <= step < 24  # no --checkpoint-every step was reached
    latest = (killed / "checkpoints" / "latest").read_text().strip()
    assert latest == f"iter_{step:06d}"
    assert not (killed / "final.pt").exists()

    resumed = subprocess.run(
        _ccnet("train", "--out", str(killed), "--resume", "--no-progress"),
        cwd=ROOT, env=_env(), capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == step and summary["iterations"] == 24
    a, b = _weights(straight / "final.pt"), _weights(killed / "final.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit-exact
    history = json.loads((killed / "history.json").read_text())
    assert history == json.loads((straight / "history.json").read_text())


def test_resume_before_the_first_checkpoint_starts_over(scenes: Path, tmp_path: Path) -> None:
    # a run that died during setup (SIGKILL) left its settings but no checkpoint
    config = _config(scenes, tmp_path / "run", iterations=2, cc_loss=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(config.to_dict()))
    summary = train(config, resume=True, command="test")
    assert summary["iterations"] == 2 and summary["resumed_from"] is None
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        train(_config(scenes, tmp_path / "elsewhere"), resume=True, command="test")


def test_tensorboard_gets_validation_pictures(scenes: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _config(scenes, tmp_path, iterations=2, val_every=1, cc_loss=False, tensorboard=True)
    train(config, command="test")
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = sorted(events.Tags()["images"])
    assert tags == [f"val/picture_{n}" for n in range(2)]  # 2 validation images (≤ 4 shown)
    for tag in tags:
        shown = events.Images(tag)
        assert [event.step for event in shown] == [1, 2]  # one per evaluation
        assert (shown[0].width, shown[0].height) == (3 * 32 + 8, 32)  # input | truth | pred
    assert "val/mIoU" in events.Tags()["scalars"]


def test_a_crop_larger_than_the_images_is_warned_about(scenes: Path, tmp_path: Path, capsys):
    train(_config(scenes, tmp_path / "fits", iterations=1, cc_loss=False), command="test")
    assert "crop-size" not in capsys.readouterr().err
    train(_config(scenes, tmp_path / "big", iterations=1, crop_size=96, cc_loss=False))
    err = capsys.readouterr().err
    assert "warning: --crop-size 96 is larger than the training images (at most 32×32)" in err
