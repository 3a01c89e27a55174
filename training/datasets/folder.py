"""The plain folder layout: ``SPLIT/images/*.{png,jpg}`` + ``SPLIT/masks/*.png``, same stems.

Masks hold training ids directly (0..K-1, 255 = ignore). ``classes.json`` at the root names the
classes, in one of three shapes::

    ["road", "car", ...]
    {"classes": ["road", "car", ...], "palette": [[128, 64, 128], ...]}
    [{"name": "road", "color": [128, 64, 128]}, ...]

Without it the number of classes is the largest id found in the ``train`` masks plus one, and
the classes are called ``class_0`` …
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ccnet.training.datasets.index import IGNORE_INDEX, Frame, LabelMap, SplitIndex
from ccnet.training.datasets.reading import IMAGE_SUFFIXES, read_mask

__all__ = ["ClassInfo", "index_folder", "infer_classes", "pair_by_stem", "read_classes_file"]

ClassInfo = tuple[tuple[str, ...], tuple[tuple[int, int, int], ...] | None]
"""Class names and, when given, their colours."""


def _colour(value: Any, path: Path, where: str) -> tuple[int, int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        raise ValueError(f"{path}: {where} must be [r, g, b] with ints 0..255, got {value!r}")
    return (value[0], value[1], value[2])


def read_classes_file(path: Path) -> ClassInfo:
    """Names (and optional colours) from a ``classes.json`` in any of the accepted shapes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: unreadable classes file ({e})") from e
    palette: list[tuple[int, int, int]] | None = None
    entries = data.get("classes") if isinstance(data, dict) else data
    if isinstance(data, dict) and data.get("palette") is not None:
        raw_palette = data["palette"]
        if not isinstance(raw_palette, list):
            raise ValueError(f"{path}: 'palette' must be a list of [r, g, b]")
        palette = [_colour(c, path, f"palette[{i}]") for i, c in enumerate(raw_palette)]
    if not isinstance(entries, list) or not entries:
        raise ValueError(
            f"{path}: expected a list of class names, {{'classes': [...]}} or "
            "[{'name': ..., 'color': [r, g, b]}, ...]"
        )
    names: list[str] = []
    colours: list[tuple[int, int, int]] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            names.append(entry["name"])
            if "color" in entry:
                colours.append(_colour(entry["color"], path, f"classes[{i}].color"))
        else:
            raise ValueError(f"{path}: classes[{i}] must be a name or {{'name': ...}}")
    if colours and palette is None:
        if len(colours) != len(names):
            raise ValueError(f"{path}: give a colour for every class or for none")
        palette = colours
    if len(names) > IGNORE_INDEX:
        raise ValueError(f"{path}: at most {IGNORE_INDEX} classes (255 means ignore)")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: class names must be unique")
    if palette is not None and len(palette) != len(names):
        raise ValueError(f"{path}: {len(palette)} colours for {len(names)} classes")
    return tuple(names), None if palette is None else tuple(palette)


def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes or path.name.startswith("."):
            continue
        if path.stem in files:
            raise ValueError(f"{path}: two files share the stem {path.stem!r} ({files[path.stem]})")
        files[path.stem] = path
    return files


def pair_by_stem(images_dir: Path, masks_dir: Path, *, require_masks: bool = True) -> list[Frame]:
    """Frames of ``images_dir`` with the mask of the same stem, in name order.

    Raises:
        ValueError: a folder is missing or empty, an image has no mask, or a mask no image.
    """
    if not images_dir.is_dir():
        raise ValueError(f"{images_dir}: folder not found")
    images = _by_stem(images_dir, IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{images_dir}: no images (*.png, *.jpg)")
    if not masks_dir.is_dir():
        if require_masks:
            raise ValueError(f"{masks_dir}: mask folder not found")
        return [Frame(path, None) for path in images.values()]
    masks = _by_stem(masks_dir, (".png",))
    missing = [stem for stem in images if stem not in masks]
    if missing and require_masks:
        raise ValueError(
            f"{images[missing[0]]}: missing mask {masks_dir / (missing[0] + '.png')}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    orphans = [stem for stem in masks if stem not in images]
    if orphans:
        raise ValueError(f"{masks[orphans[0]]}: mask without an image in {images_dir}")
    return [Frame(path, masks.get(stem)) for stem, path in images.items()]


def infer_classes(masks: list[Path], progress: bool = True) -> ClassInfo:
    """``class_0`` … up to the largest id (other than 255) found in ``masks``."""
    largest = -1
    for path in tqdm(masks, desc="scanning masks for class ids", disable=not progress):
        present = np.flatnonzero(np.bincount(read_mask(path).ravel(), minlength=256))
        present = present[present != IGNORE_INDEX]
        if present.size:
            largest = max(largest, int(present.max()))
    if largest < 0:
        raise ValueError(f"{masks[0].parent}: no class ids found (every mask is ignore)")
    return tuple(f"class_{i}" for i in range(largest + 1)), None


def index_folder(root: Path, split: str, *, progress: bool = True) -> SplitIndex:
    """The ``split`` of a plain-folder data set at ``root``."""
    frames = pair_by_stem(root / split / "images", root / split / "masks")
    classes_file = root / "classes.json"
    if classes_file.is_file():
        classes, palette = read_classes_file(classes_file)
    else:
        train = pair_by_stem(root / "train" / "images", root / "train" / "masks")
        classes, palette = infer_classes([f.mask for f in train if f.mask], progress)
    return SplitIndex(
        root=root,
        split=split,
        layout="folder",
        frames=tuple(frames),
        classes=classes,
        palette=palette,
        label_map=LabelMap.identity(len(classes)),
    )
