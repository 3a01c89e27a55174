"""Every data layout on a tiny fabricated tree, its label mapping, and its failure messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccnet.model.zoo import IMAGENET_NORMALIZATION
from ccnet.training.datasets import (
    ClipDataset,
    FrameDataset,
    check_split,
    detect_layout,
    load_split,
)
from ccnet.training.datasets.ade20k import ADE20K_CLASSES
from ccnet.training.transforms import EvalTransform
from tests.training.conftest import SIZE, stripes_mask, write_image, write_mask

EVAL = EvalTransform(IMAGENET_NORMALIZATION)

# layout fixture, layout name, class count, expected training ids of the four mask bands
CASES = [
    ("folder_tree", "folder", 3, [0, 1, 2, 255]),
    ("cityscapes_tree", "cityscapes", 19, [0, 13, 255, 255]),
    ("camvid_tree", "camvid", 11, [0, 3, 8, 255]),
    ("ade20k_tree", "ade20k", 150, [255, 0, 149, 12]),
]


def _bands(mask: torch.Tensor) -> list[int]:
    """The value of each vertical band, left to right (as written by ``stripes_mask``)."""
    columns = np.array_split(np.arange(mask.shape[-1]), 4)
    return [int(mask[..., cols[0]].flatten()[0]) for cols in columns]


@pytest.mark.parametrize(("fixture", "layout", "num_classes", "bands"), CASES)
def test_layout_reads_and_maps_labels(tree, fixture, layout, num_classes, bands) -> None:
    root = tree(fixture)
    assert detect_layout(root) == layout
    for split in ("train", "val"):
        index = load_split(root, split)
        assert index.layout == layout
        assert index.num_classes == num_classes, fixture
        check_split(index, progress=False)
        sample = FrameDataset(index, EVAL)[0]
        assert sample["image"].shape == (3, *SIZE)
        assert sample["image"].dtype == torch.float32
        assert sample["mask"].shape == SIZE
        assert _bands(sample["mask"]) == bands, fixture


def test_folder_classes_and_palette(folder_tree: Path) -> None:
    index = load_split(folder_tree, "train")
    assert index.classes == ("sky", "road", "car")
    assert index.palette == ((0, 0, 255), (9, 9, 9), (255, 0, 0))
    assert len(index.frames) == 4


def test_folder_without_classes_file_infers_the_count(folder_tree: Path) -> None:
    (folder_tree / "classes.json").unlink()
    index = load_split(folder_tree, "val", progress=False)
    assert index.classes == ("class_0", "class_1", "class_2")


def test_ade20k_has_150_unique_classes() -> None:
    assert len(ADE20K_CLASSES) == 150 == len(set(ADE20K_CLASSES))


def test_camvid_groups_frames_by_sequence(camvid_tree: Path) -> None:
    index = load_split(camvid_tree, "train")
    assert index.clip_names == ("0001TP", "Seq05VD")
    assert [len(c) for c in index.clips] == [3, 2]
    names = [index.frames[i].image.stem for i in index.clips[0]]
    assert names == sorted(names)
    windows = ClipDataset(index, clip_length=2, transform=EVAL, stride=1)
    assert len(windows) == 2 + 1  # 0001TP: 2 windows of 2 frames, Seq05VD: 1
    sample = windows[0]
    assert sample["image"].shape == (3, 2, *SIZE)
    assert sample["mask"].shape == (2, *SIZE)


def test_clip_layout(clip_tree: Path) -> None:
    assert detect_layout(clip_tree) == "clips"
    index = load_split(clip_tree, "train")
    assert index.classes == ("a", "b", "c")
    assert [len(c) for c in index.clips] == [5, 3]
    check_split(index, progress=False)
    windows = ClipDataset(index, clip_length=4, transform=EVAL, stride=1)
    assert len(windows) == 2  # the 3-frame clip is too short for training windows
    sample = windows[1]
    assert sample["image"].shape == (3, 4, *SIZE)
    # frame t's first band is t % 3: frames 1..4 of clip 0
    assert [int(sample["mask"][t, 0, 0]) for t in range(4)] == [1, 2, 0, 1]


def test_clip_dataset_rejects_image_layouts(folder_tree: Path) -> None:
    with pytest.raises(ValueError, match="has no clips"):
        ClipDataset(load_split(folder_tree, "train"), 4, EVAL)


# --------------------------------------------------------------------------- failures


def _index(root: Path, split: str = "train"):
    return load_split(root, split, progress=False)


def test_missing_mask_names_the_image(folder_tree: Path) -> None:
    (folder_tree / "train" / "masks" / "im2.png").unlink()
    with pytest.raises(ValueError, match=r"im2\.png: missing mask .*masks/im2\.png"):
        _index(folder_tree)


def test_mask_without_image_is_reported(folder_tree: Path) -> None:
    write_mask(folder_tree / "train" / "masks" / "stray.png", stripes_mask([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"stray\.png: mask without an image"):
        _index(folder_tree)


def test_size_mismatch_names_the_mask(folder_tree: Path) -> None:
    write_mask(folder_tree / "train" / "masks" / "im1.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"masks/im1\.png: mask is 10×10 but its image im1\.png"):
        check_split(_index(folder_tree), progress=False)


def test_class_id_out_of_range_names_the_mask(folder_tree: Path) -> None:
    write_mask(folder_tree / "train" / "masks" / "im3.png", stripes_mask([0, 1, 7, 9]))
    with pytest.raises(
        ValueError, match=r"im3\.png: class id\(s\) 7, 9 out of range; allowed: 0\.\.2"
    ):
        check_split(_index(folder_tree), progress=False)


def test_cityscapes_rejects_ids_above_33(cityscapes_tree: Path) -> None:
    mask = next((cityscapes_tree / "gtFine" / "val").rglob("*_labelIds.png"))
    write_mask(mask, stripes_mask([7, 40, 7, 7]))
    with pytest.raises(ValueError, match=r"labelIds\.png: class id\(s\) 40 out of range"):
        check_split(_index(cityscapes_tree, "val"), progress=False)


def test_unreadable_image_names_the_file(folder_tree: Path) -> None:
    (folder_tree / "train" / "images" / "im0.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"images/im0\.png: unreadable image"):
        check_split(_index(folder_tree), progress=False)


def test_truncated_image_is_caught_up_front(folder_tree: Path) -> None:
    path = folder_tree / "train" / "images" / "im1.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"images/im1\.png: unreadable image"):
        check_split(_index(folder_tree), progress=False)


def test_rgb_mask_is_refused(folder_tree: Path) -> None:
    path = folder_tree / "train" / "masks" / "im0.png"
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"masks/im0\.png: a mask must be single-band .*mode RGB"):
        check_split(_index(folder_tree), progress=False)


def test_bad_classes_file_is_named(folder_tree: Path) -> None:
    (folder_tree / "classes.json").write_text(json.dumps({"classes": "sky"}))
    with pytest.raises(ValueError, match=r"classes\.json: expected a list of class names"):
        _index(folder_tree)


def test_unknown_layout_lists_the_expected_structures(tmp_path: Path) -> None:
    write_image(tmp_path / "loose.png", seed=0)
    with pytest.raises(ValueError, match=r"unrecognised data layout.*leftImg8bit"):
        detect_layout(tmp_path)


def test_missing_cityscapes_mask_is_named(cityscapes_tree: Path) -> None:
    mask = next((cityscapes_tree / "gtFine" / "train").rglob("*_labelIds.png"))
    mask.unlink()
    with pytest.raises(ValueError, match=r"leftImg8bit\.png: missing mask .*gtFine_labelIds\.png"):
        _index(cityscapes_tree)


def test_clip_with_missing_mask_is_named(clip_tree: Path) -> None:
    (clip_tree / "val" / "clip_00" / "masks" / "002.png").unlink()
    with pytest.raises(ValueError, match=r"clip_00/images/002\.png: missing mask"):
        _index(clip_tree, "val")
