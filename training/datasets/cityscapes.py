"""Cityscapes: ``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` with
``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``.

The masks hold the 34 label ids (0..33); training uses the 19 evaluation classes ("train
ids"), every other label (and 255) is ignored — the mapping of cityscapesScripts' ``labels.py``.
"""

from __future__ import annotations

from pathlib import Path

from ccnet.model.checkpoint import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from ccnet.training.datasets.index import Frame, LabelMap, SplitIndex

__all__ = ["LABEL_TO_TRAIN_ID", "index_cityscapes"]

# label id -> train id for the 19 evaluated classes (cityscapesScripts labels.py)
LABEL_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

_LABEL_MAP = LabelMap.from_mapping(
    LABEL_TO_TRAIN_ID,
    ignored=[*range(34), 255],  # void labels; the mapping above overrides the evaluated ones
    allowed="Cityscapes label ids 0..33 or 255",
)
_IMAGE_SUFFIX = "_leftImg8bit.png"
_MASK_SUFFIX = "_gtFine_labelIds.png"


def index_cityscapes(root: Path, split: str) -> SplitIndex:
    """The ``split`` (train, val, test) of the Cityscapes tree at ``root``."""
    images_dir = root / "leftImg8bit" / split
    if not images_dir.is_dir():
        raise ValueError(f"{images_dir}: folder not found (expected a Cityscapes tree)")
    images = sorted(images_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
    if not images:
        raise ValueError(f"{images_dir}: no CITY/*{_IMAGE_SUFFIX} images")
    frames = []
    for image in images:
        stem = image.name[: -len(_IMAGE_SUFFIX)]
        mask = root / "gtFine" / split / image.parent.name / f"{stem}{_MASK_SUFFIX}"
        if not mask.is_file():
            raise ValueError(f"{image}: missing mask {mask}")
        frames.append(Frame(image, mask))
    return SplitIndex(
        root=root,
        split=split,
        layout="cityscapes",
        frames=tuple(frames),
        classes=CITYSCAPES_CLASSES,
        palette=CITYSCAPES_PALETTE,
        label_map=_LABEL_MAP,
    )
