"""The synthetic data set: deterministic from its seed, valid in its layout, corrupted clips."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccnet.training.datasets import check_split, detect_layout, load_split
from ccnet.training.synth import CLASSES, CORRUPTIONS, generate, render_clip


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_writes_identical_files(tmp_path: Path) -> None:
    generate(tmp_path / "a", "images", 3, n_val=1, seed=4, size=40, progress=False)
    generate(tmp_path / "b", "images", 3, n_val=1, seed=4, size=40, progress=False)
    generate(tmp_path / "c", "images", 3, n_val=1, seed=5, size=40, progress=False)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert len(a) == 1 + 2 * 4  # classes.json + image and mask per sample
    assert {k: v for k, v in a.items() if k != "classes.json"} != {
        k: v for k, v in c.items() if k != "classes.json"
    }


def test_images_form_a_valid_folder_data_set(tmp_path: Path) -> None:
    generate(tmp_path, "images", 4, n_val=2, seed=0, size=48, progress=False)
    assert detect_layout(tmp_path) == "folder"
    index = load_split(tmp_path, "train")
    assert index.classes == CLASSES
    check_split(index, progress=False)
    mask = np.asarray(Image.open(index.frames[0].mask))
    assert mask.shape == (48, 48)
    assert set(np.unique(mask)) <= set(range(len(CLASSES)))
    assert 0 in mask and len(np.unique(mask)) > 1  # background and at least one object


def test_clips_form_a_valid_clip_data_set(tmp_path: Path) -> None:
    generate(tmp_path, "clips", 2, n_val=1, seed=0, size=40, frames=6, progress=False)
    assert detect_layout(tmp_path) == "clips"
    index = load_split(tmp_path, "val")
    assert [len(c) for c in index.clips] == [6]
    check_split(index, progress=False)
    corruptions = json.loads((tmp_path / "val" / "clip_0000" / "corruptions.json").read_text())
    assert corruptions and set(corruptions.values()) <= set(CORRUPTIONS)


def test_corrupted_frames_keep_the_true_masks_and_objects_move() -> None:
    images, masks, corrupted = render_clip(np.random.default_rng(3), size=64, frames=8)
    assert 2 <= len(corrupted) <= 3
    frames = sorted(corrupted)
    assert all(b - a > 1 for a, b in itertools.pairwise(frames))  # never adjacent
    assert not np.array_equal(masks[0], masks[-1])  # objects moved
    clean = [t for t in range(8) if t not in corrupted]
    for t in frames:  # the mask of a corrupted frame is the clean scene's: between neighbours
        overlap = [np.mean(masks[t] == masks[c]) for c in clean if abs(c - t) == 1]
        assert max(overlap) > 0.8
        assert not np.array_equal(images[t], images[clean[0]])


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    generate(tmp_path, "images", 1, n_val=1, seed=0, size=32, progress=False)
    with pytest.raises(ValueError, match="not empty"):
        generate(tmp_path, "images", 1, seed=0, size=32, progress=False)
    generate(tmp_path, "images", 1, n_val=0, seed=1, size=32, overwrite=True, progress=False)
    assert not (tmp_path / "val").exists() or not any((tmp_path / "val").rglob("*.png"))
    (tmp_path / "mine").mkdir()
    other = tmp_path / "mine"
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not written by `ccnet synth`"):
        generate(other, "images", 1, seed=0, size=32, overwrite=True, progress=False)


def test_held_out_kind_is_absent_from_train_and_present_in_val(tmp_path: Path) -> None:
    generate(
        tmp_path / "h",
        "clips",
        12,
        n_val=12,
        seed=0,
        size=32,
        frames=6,
        progress=False,
        hold_out=("blur",),
    )
    generate(tmp_path / "a", "clips", 12, n_val=12, seed=0, size=32, frames=6, progress=False)

    def kinds(root: Path, split: str) -> set[str]:
        return {
            kind
            for path in (root / split).glob("clip_*/corruptions.json")
            for kind in json.loads(path.read_text()).values()
        }

    assert "blur" not in kinds(tmp_path / "h", "train")
    assert kinds(tmp_path / "h", "train") == {"occlusion", "noise"}
    assert "blur" in kinds(tmp_path / "h", "val")
    held, full = _files(tmp_path / "h"), _files(tmp_path / "a")
    # val is the same data set whether or not train holds a kind out
    assert {k: v for k, v in held.items() if k.startswith("val")} == {
        k: v for k, v in full.items() if k.startswith("val")
    }
    generator = json.loads((tmp_path / "h" / "classes.json").read_text())["generator"]
    assert generator["held_out"] == ["blur"]
    assert "held_out" not in json.loads((tmp_path / "a" / "classes.json").read_text())["generator"]


def test_hold_out_rejects_unknown_or_all_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corruption kind"):
        generate(tmp_path / "x", "clips", 1, size=32, progress=False, hold_out=("fog",))
    with pytest.raises(ValueError, match="no corruption kind"):
        generate(tmp_path / "y", "clips", 1, size=32, progress=False, hold_out=CORRUPTIONS)
    with pytest.raises(ValueError, match="clips only"):
        generate(tmp_path / "z", "images", 1, size=32, progress=False, hold_out=("blur",))
    with pytest.raises(ValueError, match="non-empty subset"):
        render_clip(np.random.default_rng(0), size=32, frames=4, corruptions=("fog",))
