"""Tiny data-set trees in every supported layout, written fresh for each test."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = (24, 32)  # (H, W): small, but not square, so transposed axes would show


def write_image(path: Path, seed: int, size: tuple[int, int] = SIZE, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def write_mask(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    return path


def stripes_mask(ids: list[int], size: tuple[int, int] = SIZE) -> np.ndarray:
    """Vertical bands of the given raw ids, left to right."""
    mask = np.zeros(size, np.uint8)
    bands = np.array_split(np.arange(size[1]), len(ids))
    for value, cols in zip(ids, bands, strict=True):
        mask[:, cols] = value
    return mask


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    """Plain folder layout: 3 classes, 4 train + 2 val images, a 255 band, classes.json."""
    root = tmp_path / "folder"
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            write_image(root / split / "images" / f"im{i}.png", seed=i)
            write_mask(root / split / "masks" / f"im{i}.png", stripes_mask([0, 1, 2, 255]))
    (root / "classes.json").write_text(
        json.dumps(
            {"classes": ["sky", "road", "car"], "palette": [[0, 0, 255], [9, 9, 9], [255, 0, 0]]}
        )
    )
    return root


@pytest.fixture
def cityscapes_tree(tmp_path: Path) -> Path:
    """Cityscapes layout with labelIds: 7 (road) -> 0, 26 (car) -> 13, 0 and 4 -> ignore."""
    root = tmp_path / "cityscapes"
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        for i in range(2):
            stem = f"{city}_000000_00001{i}"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=i)
            write_mask(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                stripes_mask([7, 26, 0, 4]),
            )
    return root


@pytest.fixture
def camvid_tree(tmp_path: Path) -> Path:
    """SegNet CamVid layout: two sequences in train (3 + 2 frames), id 11 = unlabelled."""
    root = tmp_path / "CamVid"
    names = {"train": ["0001TP_006690", "0001TP_006720", "0001TP_006750", "Seq05VD_f00000",
                       "Seq05VD_f00030"], "val": ["0016E5_07959", "0016E5_07961"]}  # fmt: skip
    for split, stems in names.items():
        for i, stem in enumerate(stems):
            write_image(root / split / f"{stem}.png", seed=i)
            write_mask(root / f"{split}annot" / f"{stem}.png", stripes_mask([0, 3, 8, 11]))
    return tmp_path  # the parent: the reader finds CamVid/ itself


@pytest.fixture
def ade20k_tree(tmp_path: Path) -> Path:
    """ADEChallengeData2016 layout: 0 = other -> ignore, k -> k - 1."""
    root = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i in range(2):
            stem = f"ADE_{split[:5]}_{i:08d}"
            write_image(root / "images" / split / f"{stem}.jpg", seed=i)
            write_mask(root / "annotations" / split / f"{stem}.png", stripes_mask([0, 1, 150, 13]))
    return root


@pytest.fixture
def clip_tree(tmp_path: Path) -> Path:
    """Clip layout: train has clips of 5 and 3 frames, val one clip of 5; 3 classes."""
    root = tmp_path / "clips"
    for split, lengths in (("train", (5, 3)), ("val", (5,))):
        for c, length in enumerate(lengths):
            for t in range(length):
                clip = root / split / f"clip_{c:02d}"
                write_image(clip / "images" / f"{t:03d}.png", seed=10 * c + t)
                write_mask(clip / "masks" / f"{t:03d}.png", stripes_mask([t % 3, 1, 255]))
    (root / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    return root


@pytest.fixture
def tree(request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """Look up one of the tree fixtures by name (for parametrised tests)."""
    return request.getfixturevalue


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test: on a shared 2-core machine, OpenMP's spinning threads
    slow tiny ops down by orders of magnitude when the other core is busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
