"""Atomic writes: the previous file or none, never a partial one."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from ccnet.model.files import (
    ensure_writable_dir,
    replace_dir,
    save_torch_atomic,
    write_bytes_atomic,
    write_files_atomic,
    write_json_atomic,
)


def test_write_replaces_and_leaves_no_temporaries(tmp_path) -> None:
    target = tmp_path / "sub" / "out.bin"
    write_bytes_atomic(target, b"old")
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~_umask(), oct(mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_group_write_is_all_or_nothing(tmp_path) -> None:
    first, blocker = tmp_path / "a.txt", tmp_path / "blocker"
    first.write_text("previous")
    blocker.write_text("a file where a directory is needed")
    with pytest.raises(FileExistsError):
        write_files_atomic({first: b"new", blocker / "b.txt": b"never"})
    assert first.read_text() == "previous"  # nothing was renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "blocker"]


def test_json_and_torch_payloads_round_trip(tmp_path) -> None:
    write_json_atomic(tmp_path / "x.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2]}
    save_torch_atomic(tmp_path / "x.pt", {"w": torch.arange(3)})
    loaded = torch.load(tmp_path / "x.pt", weights_only=True)
    assert torch.equal(loaded["w"], torch.arange(3))


def test_unwritable_directory_is_reported_early(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="cannot write to output directory"):
        ensure_writable_dir(tmp_path / "file" / "sub")
    assert ensure_writable_dir(tmp_path / "fresh").is_dir()


def test_replace_dir_swaps_whole_trees(tmp_path) -> None:
    target, staging = tmp_path / "repo", tmp_path / "staging"
    (target / "old").mkdir(parents=True)
    (staging / "new").mkdir(parents=True)
    replace_dir(staging, target)
    assert [p.name for p in target.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]
