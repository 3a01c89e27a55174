"""What a data-set reader produces: the files of one split, the classes and the label mapping.

Readers (one module per layout) only *list* files and describe how raw mask values become
training ids; they decode nothing. ``validation.check_split`` then reads everything once, before
training starts, so a broken data set fails with the file's name instead of deep in an epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["IGNORE_INDEX", "Frame", "LabelMap", "Layout", "SplitIndex"]

IGNORE_INDEX = 255
"""Mask value that takes no part in losses and metrics (every layout maps its void to it)."""

Layout = Literal["folder", "cityscapes", "camvid", "ade20k", "clips"]


@dataclass(frozen=True)
class Frame:
    """One image and its mask (``mask`` is None where a split has no labels)."""

    image: Path
    mask: Path | None


@dataclass(frozen=True, eq=False)
class LabelMap:
    """Raw mask value (0..255) -> training id (0..K-1, or 255 = ignore).

    Args:
        lut: 256 entries; a training id, ``IGNORE_INDEX``, or -1 for a raw value that must not
            occur (a class id out of range).
        allowed: human-readable description of the valid raw values, for error messages.
    """

    lut: np.ndarray
    allowed: str

    def __post_init__(self) -> None:
        if self.lut.shape != (256,):
            raise ValueError(f"a label map needs 256 entries, got shape {self.lut.shape}")

    @classmethod
    def identity(cls, num_classes: int) -> LabelMap:
        """Masks already hold training ids 0..K-1 (and 255 = ignore)."""
        if not 1 <= num_classes <= IGNORE_INDEX:
            raise ValueError(f"num_classes must be 1..255, got {num_classes}")
        lut = np.full(256, -1, np.int16)
        lut[:num_classes] = np.arange(num_classes)
        lut[IGNORE_INDEX] = IGNORE_INDEX
        return cls(lut, f"0..{num_classes - 1} or {IGNORE_INDEX} (ignore)")

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[int, int], ignored: Iterable[int], allowed: str
    ) -> LabelMap:
        """Raw ids in ``mapping`` become its values, raw ids in ``ignored`` become 255."""
        lut = np.full(256, -1, np.int16)
        for raw in ignored:
            lut[raw] = IGNORE_INDEX
        for raw, train_id in mapping.items():
            lut[raw] = train_id
        return cls(lut, allowed)

    def invalid_values(self, raw: np.ndarray) -> list[int]:
        """The raw values in ``raw`` that are not allowed (sorted, empty when all are fine)."""
        present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
        return [int(v) for v in present if self.lut[v] < 0]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Training ids (uint8) for a raw mask; values that should not occur become ignore."""
        lut = np.where(self.lut < 0, IGNORE_INDEX, self.lut).astype(np.uint8)
        return lut[raw]


@dataclass(frozen=True)
class SplitIndex:
    """The files of one split of a data set, its classes and how to read its masks.

    Attributes:
        root: the data set's root folder.
        split: ``train``, ``val`` (or the layout's own split name).
        layout: which reader produced it.
        frames: every image of the split (for clip layouts: every frame of every clip).
        clips: for layouts with temporal order, the indices into ``frames`` of each clip
            (or sequence), in frame order; None for plain image sets.
        classes: class names, index = training id.
        palette: one RGB colour per class, when the data set defines them.
        label_map: raw mask value -> training id.
    """

    root: Path
    split: str
    layout: Layout
    frames: tuple[Frame, ...]
    classes: tuple[str, ...]
    label_map: LabelMap
    clips: tuple[tuple[int, ...], ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    clip_names: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.classes)
