"""Which reader a data-set folder needs, and one entry point that calls it.

``load_split(root, split, layout)`` is what training and evaluation use; with ``layout=None``
the layout is recognised from the folder structure (the markers below), so
``ccnet train --data DIR`` works without ``--layout`` for any supported tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from ccnet.training.datasets.ade20k import ade20k_root, index_ade20k
from ccnet.training.datasets.camvid import camvid_root, index_camvid
from ccnet.training.datasets.cityscapes import index_cityscapes
from ccnet.training.datasets.clips import index_clips
from ccnet.training.datasets.folder import index_folder
from ccnet.training.datasets.index import Layout, SplitIndex

__all__ = ["LAYOUTS", "detect_layout", "load_split"]

LAYOUTS: tuple[str, ...] = get_args(Layout)


def detect_layout(root: Path) -> Layout:
    """Recognise the layout of the data set at ``root`` from its folders.

    Raises:
        ValueError: ``root`` is missing or matches no supported layout (the message lists the
            structures looked for).
    """
    if not root.is_dir():
        raise ValueError(f"{root}: data folder not found")
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if (ade20k_root(root) / "annotations" / "training").is_dir() or (
        ade20k_root(root) / "annotations" / "validation"
    ).is_dir():
        return "ade20k"
    if (camvid_root(root) / "trainannot").is_dir() or (camvid_root(root) / "valannot").is_dir():
        return "camvid"
    for split in ("train", "val"):
        if (root / split / "images").is_dir():
            return "folder"
    for split in ("train", "val"):
        if (root / split).is_dir() and any(
            (p / "images").is_dir() for p in (root / split).iterdir()
        ):
            return "clips"
    raise ValueError(
        f"{root}: unrecognised data layout; expected one of: SPLIT/images + SPLIT/masks "
        "(folder), SPLIT/CLIP/images + SPLIT/CLIP/masks (clips), leftImg8bit/ + gtFine/ "
        "(cityscapes), train/ + trainannot/ (camvid), ADEChallengeData2016/images + "
        "annotations (ade20k)"
    )


def load_split(
    root: str | Path, split: str, layout: Layout | None = None, *, progress: bool = True
) -> SplitIndex:
    """List the ``split`` of the data set at ``root`` (no decoding; see ``validation``).

    Args:
        root: the data set's folder.
        split: ``train`` or ``val`` (``test`` where the layout has one).
        layout: one of ``LAYOUTS``; None recognises it from the folder structure.
        progress: show progress when class ids have to be scanned.
    """
    root = Path(root)
    layout = detect_layout(root) if layout is None else layout
    if layout == "folder":
        return index_folder(root, split, progress=progress)
    if layout == "clips":
        return index_clips(root, split, progress=progress)
    if layout == "cityscapes":
        return index_cityscapes(root, split)
    if layout == "camvid":
        return index_camvid(root, split)
    if layout == "ade20k":
        return index_ade20k(root, split)
    raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
