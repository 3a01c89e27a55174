"""CamVid in the SegNet layout: ``SPLIT/*.png`` + ``SPLITannot/*.png`` (SPLIT = train, val, test).

Masks hold the 11 classes 0..10 and 11 = unlabelled (ignored). File names are
``SEQUENCE_FRAME.png`` (``0001TP_006690.png``, ``Seq05VD_f00000.png``); frames of one sequence,
in name order, form a clip, so CamVid also feeds CCNet3D with T consecutive labelled frames.
The root may be the folder holding ``train/`` and ``trainannot/`` or its parent ``CamVid/``.
"""

from __future__ import annotations

from pathlib import Path

from ccnet.training.datasets.folder import pair_by_stem
from ccnet.training.datasets.index import IGNORE_INDEX, LabelMap, SplitIndex

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "camvid_root", "index_camvid", "sequence_of"]

CAMVID_CLASSES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip
CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip

_LABEL_MAP = LabelMap.from_mapping(
    {i: i for i in range(len(CAMVID_CLASSES))},
    ignored=[len(CAMVID_CLASSES), IGNORE_INDEX],
    allowed="CamVid ids 0..10, 11 (unlabelled) or 255",
)


def camvid_root(root: Path) -> Path:
    """``root`` itself or ``root/CamVid``, whichever holds ``trainannot/``."""
    if not (root / "trainannot").is_dir() and (root / "CamVid" / "trainannot").is_dir():
        return root / "CamVid"
    return root


def sequence_of(stem: str) -> str:
    """``0001TP_006690`` -> ``0001TP``: the sequence a frame belongs to."""
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def index_camvid(root: Path, split: str) -> SplitIndex:
    """The ``split`` of the CamVid tree at ``root``, its frames grouped into sequences."""
    base = camvid_root(root)
    frames = pair_by_stem(base / split, base / f"{split}annot")
    sequences: dict[str, list[int]] = {}
    for i, frame in enumerate(frames):  # name order is frame order within a sequence
        sequences.setdefault(sequence_of(frame.image.stem), []).append(i)
    return SplitIndex(
        root=base,
        split=split,
        layout="camvid",
        frames=tuple(frames),
        classes=CAMVID_CLASSES,
        palette=CAMVID_PALETTE,
        label_map=_LABEL_MAP,
        clips=tuple(tuple(ids) for ids in sequences.values()),
        clip_names=tuple(sequences),
    )
