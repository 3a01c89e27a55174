"""Torch datasets over a ``SplitIndex``: single frames for CCNet, windows of frames for CCNet3D.

Keys. A dataset accepts a plain index or an ``(index, seed)`` pair. The pair is what the
training sampler yields: the seed drives that sample's augmentation through its own
``torch.Generator``, so a sample's crop and flip depend only on (run seed, epoch, index) —
never on worker scheduling or on how far a run got before it was resumed.

Sample dicts: ``image`` float ``(3, H, W)`` (frames) or ``(3, T, H, W)`` (clips), ``mask`` long
``(H, W)`` or ``(T, H, W)`` (255 = ignore), ``index`` int, and for clips ``count`` bool ``(T,)``:
which frames of the window an evaluation should score (windows overlap at a clip's end).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ccnet.model.clip_windows import first_cover, plan_windows
from ccnet.training.datasets.index import IGNORE_INDEX, SplitIndex
from ccnet.training.datasets.reading import read_image, read_mask

__all__ = ["ClipDataset", "FrameDataset", "SampleKey", "Transform"]

SampleKey = int | tuple[int, int]
"""A sample index, or (index, augmentation seed)."""


class Transform(Protocol):
    """Turns uint8 frames ``(T, 3, H, W)`` and masks ``(T, H, W)`` into network inputs.

    Returns float ``(T, 3, h, w)`` and long ``(T, h, w)``; ``generator`` is None at evaluation.
    """

    def __call__(
        self, images: Tensor, masks: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]: ...


def _split_key(key: SampleKey) -> tuple[int, torch.Generator | None]:
    if isinstance(key, tuple):
        index, seed = key
        return int(index), torch.Generator().manual_seed(int(seed))
    return int(key), None


def _load(index: SplitIndex, frame_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """uint8 frames (T, 3, H, W) and training-id masks (T, H, W) of ``frame_ids``."""
    images, masks = [], []
    for i in frame_ids:
        frame = index.frames[i]
        rgb = read_image(frame.image)
        if frame.mask is None:
            mask = np.full(rgb.shape[:2], IGNORE_INDEX, np.uint8)
        else:
            mask = index.label_map(read_mask(frame.mask))
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"{frame.mask}: mask size differs from its image {frame.image}")
        images.append(torch.from_numpy(rgb).permute(2, 0, 1))
        masks.append(torch.from_numpy(mask))
    shapes = {tuple(m.shape) for m in masks}
    if len(shapes) > 1:
        raise ValueError(
            f"{index.frames[frame_ids[0]].image.parent}: frames of one clip differ in size "
            f"({sorted(shapes)})"
        )
    return torch.stack(images), torch.stack(masks)


class FrameDataset(Dataset):
    """Every frame of a split as one image sample (also clip layouts, frame by frame).

    Args:
        index: the split.
        transform: augmentation (training) or normalisation (evaluation).
    """

    def __init__(self, index: SplitIndex, transform: Transform) -> None:
        self.index = index
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index.frames)

    def __getitem__(self, key: SampleKey) -> dict[str, Tensor | int]:
        i, generator = _split_key(key)
        images, masks = self.transform(*_load(self.index, [i]), generator)
        return {"image": images[0], "mask": masks[0].long(), "index": i}


class ClipDataset(Dataset):
    """Windows of ``clip_length`` consecutive frames of each clip (CCNet3D samples).

    Args:
        index: a split with ``clips`` (the clip layout, CamVid sequences).
        clip_length: frames per window (T).
        transform: applied with the same random draws to every frame of a window.
        stride: distance between training windows (full windows only; the last one moved back
            to the clip's end when the stride does not reach it); None = evaluation windows,
            ``clip_length`` apart, that score each frame exactly once (``model.clip_windows``).
    """

    def __init__(
        self, index: SplitIndex, clip_length: int, transform: Transform, stride: int | None = 1
    ) -> None:
        if index.clips is None:
            raise ValueError(
                f"{index.root}: the {index.layout} layout has no clips; CCNet3D needs clip data "
                "(--layout clips, or CamVid sequences)"
            )
        self.index = index
        self.clip_length = clip_length
        self.transform = transform
        self.windows: list[tuple[tuple[int, ...], list[bool]]] = []
        for clip in index.clips:
            if stride is None:
                plan = plan_windows(len(clip), clip_length, clip_length)
                counted = first_cover(plan)
            else:
                plan = plan_windows(len(clip), clip_length, stride, full_only=True)
                counted = [[True] * clip_length for _ in plan]
            for (start, stop), count in zip(plan, counted, strict=True):
                self.windows.append((clip[start:stop], count))
        if not self.windows:
            longest = max(len(c) for c in index.clips)
            raise ValueError(
                f"{index.root / index.split}: no clip has {clip_length} frames (longest: "
                f"{longest}); use a shorter --clip-length"
            )

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: SampleKey) -> dict[str, Tensor | int]:
        i, generator = _split_key(key)
        frame_ids, count = self.windows[i]
        images, masks = self.transform(*_load(self.index, frame_ids), generator)
        return {
            "image": images.transpose(0, 1),  # (T, 3, H, W) -> (3, T, H, W)
            "mask": masks.long(),
            "count": torch.tensor(count),
            "index": i,
        }
