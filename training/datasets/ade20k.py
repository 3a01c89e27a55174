"""ADE20K (SceneParsing 2016): ``ADEChallengeData2016/images/{training,validation}/*.jpg`` +
``annotations/{training,validation}/*.png``.

Masks hold 0 = "other" and 1..150 for the 150 classes. As in every published ADE20K result
(mmseg's ``reduce_zero_label``), 0 is ignored and the classes shift down to 0..149. The root may
be ``ADEChallengeData2016`` itself or its parent; split ``train``/``val`` mean
``training``/``validation``.
"""

from __future__ import annotations

from pathlib import Path

from ccnet.training.datasets.folder import pair_by_stem
from ccnet.training.datasets.index import IGNORE_INDEX, LabelMap, SplitIndex

__all__ = ["ADE20K_CLASSES", "ade20k_root", "index_ade20k"]

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

_SPLITS = {"train": "training", "val": "validation"}
_LABEL_MAP = LabelMap.from_mapping(
    {raw: raw - 1 for raw in range(1, len(ADE20K_CLASSES) + 1)},
    ignored=[0, IGNORE_INDEX],
    allowed="ADE20K ids 0 (other, ignored)..150 or 255",
)


def ade20k_root(root: Path) -> Path:
    """``root`` or ``root/ADEChallengeData2016``, whichever holds ``images/``."""
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016" / "images").is_dir():
        return root / "ADEChallengeData2016"
    return root


def index_ade20k(root: Path, split: str) -> SplitIndex:
    """The ``split`` (train/training, val/validation) of the ADE20K tree at ``root``."""
    base = ade20k_root(root)
    folder = _SPLITS.get(split, split)
    frames = pair_by_stem(base / "images" / folder, base / "annotations" / folder)
    return SplitIndex(
        root=base,
        split=split,
        layout="ade20k",
        frames=tuple(frames),
        classes=ADE20K_CLASSES,
        label_map=_LABEL_MAP,
    )
