"""Settings: defaults < config file < flags; files are checked key by key."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ccnet.training.config import (
    TrainConfig,
    add_config_arguments,
    command_line,
    load_config_file,
    resolve_config,
)


def _flags(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return vars(parser.parse_args(argv))


def test_flags_override_the_file_which_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: /d\nout: /o\nbatch-size: 4\nlr: 0.05\namp: false\nlayout: clips\n")
    config = resolve_config(_flags(["--lr", "0.1", "--amp"]), path)
    assert config.batch_size == 4  # file
    assert config.lr == 0.1  # flag over file
    assert config.amp is True  # flag over file
    assert config.layout == "clips"
    assert config.momentum == TrainConfig().momentum  # default


def test_json_config_and_only_given_flags_count(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"data": "/d", "out": "/o", "iterations": 7}))
    assert _flags([]) == {}
    assert resolve_config({}, path).iterations == 7


def test_unknown_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data: /d\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown setting 'learning_rate'"):
        load_config_file(path)


def test_wrong_type_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"batch_size": "eight"}))
    with pytest.raises(ValueError, match=r"bad\.json: batch_size must be an integer"):
        load_config_file(path)


def test_missing_data_and_out_are_reported() -> None:
    with pytest.raises(ValueError, match="missing --data and --out"):
        resolve_config({})


def test_range_checks() -> None:
    with pytest.raises(ValueError, match="scale_min"):
        TrainConfig(data="d", out="o", scale_min=2.0, scale_max=1.0)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        resolve_config({"data": "d", "out": "o", "iterations": "0"})


def test_optional_fields_accept_none(tmp_path: Path) -> None:
    config = resolve_config({"data": "d", "out": "o", "val_split": "none", "clip_length": "3"})
    assert config.val_split is None
    assert config.clip_length == 3


def test_crop_batch_iterations_and_lr_default_to_the_models_recipe() -> None:
    tiny = resolve_config({"data": "d", "out": "o"})
    assert (tiny.crop_size, tiny.batch_size, tiny.iterations, tiny.lr) == (128, 8, 3000, 0.02)
    video = resolve_config({"data": "d", "out": "o", "model": "ccnet3d-tiny"})
    assert (video.crop_size, video.batch_size, video.iterations) == (128, 2, 3000)
    paper = resolve_config({"data": "d", "out": "o", "model": "ccnet-r101-official"})
    assert (paper.crop_size, paper.batch_size, paper.iterations, paper.lr) == (769, 8, 60_000, 0.01)
    given = resolve_config({"data": "d", "out": "o", "model": "ccnet-r50", "crop_size": "512"})
    assert given.crop_size == 512 and given.iterations == 60_000  # a flag wins over the recipe
    with pytest.raises(ValueError, match="unknown model 'ccnet-r7'"):
        resolve_config({"data": "d", "out": "o", "model": "ccnet-r7"})


def test_the_recorded_command_spells_out_the_recipe() -> None:
    config = resolve_config({"data": "d", "out": "o", "model": "ccnet-r50"})
    words = command_line(config).split()
    for flag, value in (("--crop-size", "769"), ("--iterations", "60000"), ("--lr", "0.01")):
        assert words[words.index(flag) + 1] == value  # reproducible if the recipe changes
    assert resolve_config(_flags(words[2:])) == config


def test_flag_help_names_the_recipe(capsys) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert "the model's recipe" in parser.format_help()
