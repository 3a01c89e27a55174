"""The ``ccnet`` command line: help, listing, prediction, conversion errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ccnet.cli import build_parser, main
from ccnet.model import list_models


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
        [sys.executable, "-m", "ccnet", "--help"], capture_output=True, text=True, check=False
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
    fractions = summary[str(image)]["class_fractions"]
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


def test_models_does_not_import_torch() -> None:
    """`ccnet models` once built every network to count parameters: 7-9 s for ten rows."""
    code = "import sys, ccnet.cli; ccnet.cli.main(['models']); print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_models_catalog_matches_the_zoo() -> None:
    """The table `ccnet models` reads is what model/zoo.py builds (`ccnet models --refresh`
    regenerates it)."""
    import ccnet.cli as ccnet_cli

    assert ccnet_cli._catalog() == ccnet_cli._zoo_rows(), "stale: run `ccnet models --refresh`"


def test_models_marks_bundled_weights(capsys) -> None:
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["ccnet-tiny"]["bundled_weights"].endswith("ccnet-tiny.pt")
    assert rows["ccnet3d-tiny"]["bundled_weights"].endswith("ccnet3d-tiny.pt")
    assert rows["ccnet-r50"]["bundled_weights"] is None
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "synthetic" in table and "ccnet convert" in table and "ccnet train" in table


class _ClosedPipe:
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_models_into_a_closed_pipe_is_quiet(monkeypatch, capsys) -> None:
    """`ccnet models --json | head` once ended with `error: [Errno 32] Broken pipe`."""
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["models", "--json"]) == 0
    monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_models_piped_into_head() -> None:
    done = subprocess.run(
        f"'{sys.executable}' -m ccnet models --json | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.stdout == "[\n" and done.stderr == ""


def test_version(capsys) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ccnet {version('ccnet-stack')}"


@pytest.mark.parametrize(
    "command", [["models"], ["predict"], ["serve"], ["export", "onnx"]], ids=" ".join
)
def test_every_flag_has_help(command) -> None:
    parser = build_parser()
    for name in command:
        parser = parser._subparsers._group_actions[0].choices[name]
    for action in parser._actions:
        if action.option_strings and action.help != "==SUPPRESS==":
            assert action.help, f"{' '.join(command)} {action.option_strings[0]} has no help"


def test_make_serve_takes_a_port_and_shows_the_install_step() -> None:
    """`make serve` had no port variable and installed silently for minutes."""
    import shutil
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "serve", "PORT=8123"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--port 8123" in done.stdout
    assert "installing" in done.stdout and "--quiet" not in done.stdout


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_top_level_help_and_version_import_no_torch(flag) -> None:
    """`ccnet --help` took ~2.5 s: registering every command imported torch (training's
    flags). Now only the command being run is registered, and none for these two."""
    code = (
        "import sys, ccnet.cli\n"
        f"try:\n    ccnet.cli.main([{flag!r}])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'numpy' in sys.modules, "
        "'importlib.metadata' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False False False", done.stdout


def test_mistyped_flag_gets_the_subcommands_usage_and_a_suggestion(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--prot", "8000"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: ccnet serve" in err
    assert "unrecognized arguments: --prot 8000 (did you mean --port?)" in err
    with pytest.raises(SystemExit):
        main(["export", "onnx", "m.pt", "-o", "d", "--outptu=mask"])
    err = capsys.readouterr().err
    assert "usage: ccnet export onnx" in err and "did you mean --output?" in err
    with pytest.raises(SystemExit):
        main(["serv"])
    assert "unknown command 'serv' (did you mean serve?)" in capsys.readouterr().err


def test_out_of_range_setting_is_one_line_naming_it(capsys, monkeypatch) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", "70000"])
    assert exit_info.value.code == 2
    assert "argument --port: '70000' is not a port number (0..65535)" in capsys.readouterr().err
    monkeypatch.setenv("CCNET_MAX_SIDE", "2")
    assert main(["serve", "--port", "0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ccnet serve: error: invalid setting CCNET_MAX_SIDE=2: ")
    assert "pydantic" not in line


def _subparsers(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*path, name))


def test_each_flag_means_one_thing_in_every_command() -> None:
    """-o was --output-dir in predict and export onnx but --output in convert and export
    triton, where --output elsewhere picks a kind of result."""
    meanings: dict[str, set[str]] = {}
    for path, parser in _subparsers(build_parser()):
        for action in parser._actions:
            flags = action.option_strings
            if "-o" in flags:
                assert "--out" in flags, f"ccnet {' '.join(path)}: -o is {flags}"
            assert "--output-dir" not in flags, f"ccnet {' '.join(path)}"
            if "--output" in flags:  # a kind of result: a choice, never a path
                assert action.choices, f"ccnet {' '.join(path)} --output takes a path"
            for flag in flags:
                meanings.setdefault(flag, set()).add(action.dest)
    assert meanings["-o"] == {"output", "output_dir", "out"}  # where results go: one flag


def test_predict_model_name_means_its_bundled_weights(tmp_path, capsys) -> None:
    """`--model ccnet-tiny` silently built untrained weights with Cityscapes class names."""
    out_default, out_named = tmp_path / "a", tmp_path / "b"
    base = ["predict", "--sample", "camera", "--output", "png", "--no-progress"]
    assert main([*base, "-o", str(out_default), "--precision", "fp32"]) == 0
    argv = [*base, "-o", str(out_named), "--model", "ccnet-tiny", "--precision", "fp32"]
    assert main(argv) == 0
    capsys.readouterr()
    first = np.asarray(Image.open(next(out_default.rglob("*_mask.png"))))
    second = np.asarray(Image.open(next(out_named.rglob("*_mask.png"))))
    np.testing.assert_array_equal(first, second)
    assert main([*base, "-o", str(tmp_path / "c"), "--model", "ccnet-r18"]) == 2
    err = capsys.readouterr().err
    assert "--model ccnet-r18: no bundled weights" in err and "--untrained" in err
