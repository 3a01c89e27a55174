"""Settings: defaults < config file < flags; files are checked key by key."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from training.config import TrainConfig, add_config_arguments, load_config_file, resolve_config


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
