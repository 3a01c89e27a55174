"""The BatchNorm recalibration bench: what it recomputes is the plain average of the batches'
statistics, it leaves the training RNG alone, and it runs end to end on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import bn_recalibration
from ccnet.training.config import TrainConfig
from ccnet.training.loop import train
from ccnet.training.synth import generate


def test_recalibration_is_the_average_of_the_batches_and_draws_nothing() -> None:
    norm = torch.nn.BatchNorm2d(3, momentum=0.1)
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), norm)  # dropout draws from the RNG
    generator = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randn(4, 3, 5, 5, generator=generator) + i} for i in range(3)]
    torch.manual_seed(7)
    before = torch.get_rng_state()
    bn_recalibration.recalibrate(model, iter(batches), count=2)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), before)
    # train-mode dropout scales what survives, so the layer saw other inputs than the batches;
    # recompute what it saw under the same forked RNG to know the expected means
    with torch.random.fork_rng():
        torch.manual_seed(7)
        seen = [torch.nn.functional.dropout(b["image"], 0.5) for b in batches[:2]]
    expected = torch.stack([s.mean(dim=(0, 2, 3)) for s in seen]).mean(dim=0)
    assert torch.allclose(norm.running_mean, expected, atol=1e-5)
    assert norm.momentum == 0.1 and not model.training


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bn")
    generate(root / "data", "images", 6, n_val=2, seed=0, size=32, progress=False)
    config = TrainConfig(
        model="ccnet-tiny",
        data=str(root / "data"),
        out=str(root / "run"),
        iterations=4,
        batch_size=2,
        crop_size=32,
        val_every=0,
        checkpoint_every=2,
        keep_checkpoints=5,
        tensorboard=False,
        progress=False,
    )
    train(config)
    return root / "run"


def test_the_bench_prints_one_row_per_checkpoint(tiny_run: Path, tmp_path: Path, capsys) -> None:
    assert (
        bn_recalibration.main([str(tiny_run), "--batches", "2", "--json", str(tmp_path / "r")]) == 0
    )
    out = capsys.readouterr().out
    assert "| 2 " in out and "| 4 " in out and "recalibrated (2 batches)" in out
    rows = json.loads((tmp_path / "r").read_text())
    assert [row["step"] for row in rows] == [2, 4]
    assert all(0 <= row["recalibrated"] <= 100 for row in rows)
    assert bn_recalibration.main([str(tmp_path)]) == 2  # not a run folder
