"""The ``ccnet`` command line: help, listing, prediction, conversion errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ccnet_cli import build_parser, main
from model import list_models


def test_every_subcommand_has_help(capsys) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    expected = {"models", "predict", "serve", "convert", "train", "evaluate", "synth", "export"}
    assert set(commands) == expected
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: ccnet" in capsys.readouterr().out


def test_console_script_is_installed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ccnet_cli", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "predict" in done.stdout


def test_models_lists_the_zoo(capsys) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list_models()
    assert {row["kind"] for row in rows} == {"image", "video"}


def test_predict_writes_mask_and_overlay(tmp_path, capsys) -> None:
    image = tmp_path / "street scene.png"
    rgb = np.random.default_rng(0).integers(0, 256, (41, 67, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image)
    out = tmp_path / "out"
    assert main(["predict", str(image), "-o", str(out), "--max-side", "64"]) == 0
    summary = json.loads(capsys.readouterr().out)
    mask = Image.open(out / "street scene_mask.png")
    assert mask.mode == "P"
    assert mask.size == (67, 41)
    assert Image.open(out / "street scene_overlay.png").size == (67, 41)
    fractions = summary["street scene"]["class_fractions"]
    assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-3)
    assert sorted(p.name for p in out.iterdir()) == [
        "street scene_mask.png",
        "street scene_overlay.png",
    ]  # no temporary files left behind


def test_predict_reports_bad_files_and_keeps_going(tmp_path, capsys) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    code = main(["predict", str(bad), str(good), "-o", str(out), "--output", "png"])
    captured = capsys.readouterr()
    assert code == 2
    assert "bad.png" in captured.err
    assert (out / "good_mask.png").exists()
    assert not (out / "bad_mask.png").exists()


def test_predict_with_corrupt_checkpoint_fails_cleanly(tmp_path, capsys) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"garbage")
    code = main(
        ["predict", "--sample", "camera", "--checkpoint", str(checkpoint), "-o", str(tmp_path)]
    )
    assert code == 2
    assert "model.pt" in capsys.readouterr().err


def test_predict_needs_inputs(tmp_path, capsys) -> None:
    assert main(["predict", "-o", str(tmp_path)]) == 2
    assert "nothing to segment" in capsys.readouterr().err


def test_convert_missing_file(tmp_path, capsys) -> None:
    code = main(
        ["convert", "--from", "official", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "x.pt")]
    )
    assert code == 2
    assert "nope.pth" in capsys.readouterr().err


def test_bad_option_values_are_rejected(tmp_path) -> None:
    for bad in (["--alpha", "2"], ["--max-side", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", "--sample", "camera", "-o", str(tmp_path), *bad])
        assert exit_info.value.code == 2
