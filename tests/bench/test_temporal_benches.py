"""The temporal benchmarks run end to end on tiny clips and untrained models; their numbers are
not asserted on, but the attention the diagnostic recomputes must match the model's own block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import temporal_attention, temporal_gain
from ccnet.model import build_model, save_checkpoint
from ccnet.training.synth import CLASSES, generate


@pytest.fixture
def clips_and_models(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = tmp_path / "clips"
    generate(data, "clips", 1, n_val=2, seed=0, size=32, frames=5, progress=False)
    torch.manual_seed(0)
    two_d = build_model("ccnet-tiny", num_classes=len(CLASSES))
    three_d = build_model("ccnet3d-tiny", num_classes=len(CLASSES))
    with torch.no_grad():  # an untrained block is the identity: give it something to do
        three_d.head.cca.gamma.fill_(0.5)
    meta = {"classes": list(CLASSES), "provenance": {"data_generator": {"held_out": ["blur"]}}}
    save_checkpoint(two_d, {"classes": list(CLASSES)}, tmp_path / "2d.pt")
    save_checkpoint(three_d, meta, tmp_path / "3d.pt")
    return data, tmp_path / "2d.pt", tmp_path / "3d.pt"


def test_temporal_gain_prints_both_models_and_marks_held_out_kinds(
    clips_and_models: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, two_d, three_d = clips_and_models
    pair = f"{two_d},{three_d}"
    results = temporal_gain.main(["--data", str(data), "--pair", pair, "--pair", pair])
    out = capsys.readouterr().out
    assert "blur (held out)" in out
    assert "± 0.0" in out  # two identical seeds: no spread
    assert len(results) == 2 and results[0]["3d"]["held_out"] == ["blur"]
    with pytest.raises(SystemExit) as missing:
        temporal_gain.main(["--data", str(data), "--pair", f"{two_d},{data / 'nope.pt'}"])
    assert missing.value.code == 2


def test_temporal_attention_recomputes_the_block_and_splits_by_group(
    clips_and_models: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, two_d, three_d = clips_and_models
    (result,) = temporal_attention.main([str(three_d), "--data", str(data)])
    assert result["max_rel_error_vs_block"] < 1e-4
    assert result["gamma"] == pytest.approx(0.5)
    passes = result["attention"]
    assert set(passes) == {"pass 1", "pass 2"}
    for groups in passes.values():
        for name, stats in groups.items():
            assert 0 <= stats["time_mass"] <= 1, name
            assert stats["on_corrupted"] <= stats["time_mass"] + 1e-9, name
    assert "time is worth" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not a CCNet3D"):
        temporal_attention.main([str(two_d), "--data", str(data)])
