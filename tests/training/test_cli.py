"""``ccnet synth`` → ``ccnet train`` → ``ccnet evaluate`` round trip, and CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ccnet.cli import main
from ccnet.model import load_checkpoint
from ccnet.training.synth import CLASSES

TRAIN_FLAGS = [
    "--model", "ccnet-tiny", "--iterations", "3", "--batch-size", "2", "--crop-size", "32",
    "--val-every", "0", "--checkpoint-every", "3", "--no-tensorboard", "--no-progress",
    "--threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data, run = root / "data", root / "run"
    assert main(["synth", str(data), "--n", "4", "--val", "2", "--size", "32", "--seed", "1"]) == 0
    config = root / "run.yaml"
    config.write_text(f"data: {data}\nout: {run}\nlr: 0.005\n")
    assert main(["train", "--config", str(config), *TRAIN_FLAGS]) == 0
    return data, run


def test_train_writes_a_run_folder(trained, capsys) -> None:
    _, run = trained
    for name in ("config.json", "best.pt", "final.pt", "summary.json", "checkpoints/latest"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 0.005  # from the file
    assert config["batch_size"] == 2  # from the flags
    _, meta = load_checkpoint(run / "final.pt")
    assert meta["provenance"]["command"].startswith("ccnet ")


@pytest.mark.parametrize("mode", ["whole", "slide", "multiscale"])
def test_evaluate_prints_json(trained, capsys, mode: str) -> None:
    data, run = trained
    capsys.readouterr()
    extra = ["--tile", "24", "--stride", "16"] if mode == "slide" else ["--scales", "0.75,1"]
    assert main(["evaluate", str(run / "final.pt"), "--data", str(data), "--mode", mode,
                 "--json", "--threads", "1", *extra]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert {"mIoU", "per_class_iou", "pixel_acc"} <= set(result)
    assert result["pixels"] == 2 * 32 * 32
    assert list(result["per_class_iou"]) == list(CLASSES)
    assert 0.0 <= result["pixel_acc"] <= 1.0
    assert result["scores_are"].startswith("fractions of 1")  # labelled: JSON keeps fractions


def test_evaluate_table(trained, capsys) -> None:
    data, run = trained
    capsys.readouterr()
    assert main(["evaluate", str(run / "final.pt"), "--data", str(data), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "speckle" in out
    assert "2 images," in out  # an image split counts images, not frames


def test_slide_without_tile_uses_the_training_crop(trained, capsys) -> None:
    data, run = trained
    capsys.readouterr()
    assert main(["evaluate", str(run / "final.pt"), "--data", str(data), "--mode", "slide",
                 "--json", "--threads", "1"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["tile"] == 32 and result["mode"] == "slide"  # --crop-size 32 above
    assert result["unit"] == "images"


def test_evaluate_report_writes_charts_and_json(trained, tmp_path, capsys) -> None:
    data, run = trained
    report = tmp_path / "report"
    assert main(["evaluate", str(run / "final.pt"), "--data", str(data), "--report",
                 str(report), "--json", "--threads", "1"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    saved = json.loads((report / "report.json").read_text())
    matrix = saved["confusion_matrix"]
    assert len(matrix) == len(CLASSES) and sum(map(sum, matrix)) == result["pixels"]
    assert saved["mIoU"] == result["mIoU"]
    for name in ("confusion.png", "iou.png"):
        with Image.open(report / name) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 200, name
            assert len(image.getcolors(1 << 20) or range(1000)) > 8, name  # a chart, not blank


def test_resume_of_a_finished_run_changes_nothing(trained, capsys) -> None:
    _, run = trained
    before = (run / "final.pt").read_bytes()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert (run / "final.pt").read_bytes() == before


def test_evaluate_errors_exit_2_and_name_the_file(trained, tmp_path, capsys) -> None:
    data, _ = trained
    missing = tmp_path / "nope.pt"
    assert main(["evaluate", str(missing), "--data", str(data)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "data folder not found" in capsys.readouterr().err


def test_synth_refuses_a_non_empty_folder(tmp_path, capsys) -> None:
    (tmp_path / "x.txt").write_text("mine")
    assert main(["synth", str(tmp_path), "--n", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_synth_hold_out_names_an_unknown_kind(tmp_path, capsys) -> None:
    args = ["synth", str(tmp_path / "c"), "--kind", "clips", "--n", "1", "--size", "32"]
    assert main([*args, "--hold-out", "fog"]) == 2
    assert "unknown corruption kind(s) ['fog']" in capsys.readouterr().err
    assert main([*args, "--hold-out", "blur,noise", "--frames", "4"]) == 0


def test_train_export_writes_a_checked_onnx_beside_best_pt(tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["synth", str(data), "--n", "2", "--val", "1", "--size", "32", "--seed", "2"]) == 0
    capsys.readouterr()
    argv = ["train", "--data", str(data), "--out", str(run), *TRAIN_FLAGS, "--export", "onnx"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["export"]["checkpoint"] == str(run / "best.pt")
    sidecar = json.loads((run / "model.json").read_text())
    assert summary["export"]["onnx"] == str(run / "model.onnx") and (run / "model.onnx").is_file()
    assert sidecar["parity"]["passed"] and sidecar["parity"]["cases"]


def test_run_folder_has_a_text_log_also_on_stderr_without_the_bar(tmp_path, capsys) -> None:
    """`--no-progress` printed nothing and the run folder had no text log."""
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["synth", str(data), "--n", "4", "--val", "2", "--size", "32", "--seed", "2"]) == 0
    capsys.readouterr()
    flags = [*TRAIN_FLAGS, "--val-every", "3", "--log-every", "1"]
    assert main(["train", "--data", str(data), "--out", str(run), *flags]) == 0
    log = (run / "train.log").read_text().splitlines()
    assert "training ccnet-tiny on" in log[0] and "3 steps" in log[0]
    steps = [line for line in log if "loss main" in line and "total" in line and "; lr " in line]
    assert len(steps) == 3, log
    (val,) = [line for line in log if ": val mIoU" in line]
    assert val.rstrip().endswith("%"), val  # percent, as every human-facing line
    assert "best val mIoU" in log[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["scores_are"].startswith("fractions of 1")
    err = capsys.readouterr().err
    assert all(line.split(" ", 2)[2] in err for line in log)  # the same lines, no bar


def test_failed_start_leaves_no_run_folder(tmp_path, capsys) -> None:
    """A start that fails (here: no data) left config.json behind."""
    data, run = tmp_path / "empty", tmp_path / "run"
    (data / "train" / "images").mkdir(parents=True)
    (data / "train" / "masks").mkdir(parents=True)
    assert main(["train", "--data", str(data), "--out", str(run), *TRAIN_FLAGS]) == 2
    assert "error" in capsys.readouterr().err
    assert not (run / "config.json").exists()
