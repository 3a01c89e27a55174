"""Scoring a model on clips the way a video user sees it: per frame kind, and how much it flickers.

Two figures decide whether CCNet3D earns its place over a 2D model run frame by frame:

* mIoU per frame group (``all``, ``clean``, ``corrupted`` and each corruption kind), from one
  confusion matrix per group (``training.synth.corruption_groups``);
* temporal stability: the share of pixels whose predicted label changes between consecutive
  frames of a clip *where the truth does not change* (both frames labelled, same class). A
  model that reads each frame alone flickers wherever one frame is hard; lower is better.

A 2D model scores every frame alone; a CCNet3D scores windows that cover each frame once
(``training.evaluate.predictions``), so consecutive frames may come from different windows,
as they do in the service.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ccnet.model import CCNet
from ccnet.training.datasets import SplitIndex
from ccnet.training.datasets.index import IGNORE_INDEX
from ccnet.training.evaluate import InferenceSettings, build_eval_dataset, evaluate_groups
from ccnet.training.metrics import ConfusionMatrix

__all__ = ["FLICKER_GROUPS", "ClipFlicker", "ClipScores", "LabelFlicker", "score_clips"]

FLICKER_GROUPS: tuple[str, ...] = ("all", "clean", "corrupted")
"""Frame pairs: every consecutive pair, pairs of two clean frames, pairs with a corrupted one."""


@dataclass
class LabelFlicker:
    """Counts label changes between consecutive frames where the truth stays the same."""

    changed: int = 0
    stable: int = 0

    def update(self, before: Tensor, after: Tensor, truth_before: Tensor, truth: Tensor) -> None:
        """Add one pair of consecutive frames: predictions and truths, each ``(H, W)``."""
        same = (truth_before == truth) & (truth != IGNORE_INDEX)
        self.stable += int(same.sum())
        self.changed += int((same & (before != after)).sum())

    @property
    def rate(self) -> float | None:
        """Changed / stable pixels (None before any stable pixel)."""
        return self.changed / self.stable if self.stable else None


class ClipFlicker:
    """Label flicker over a clip split, fed one predicted frame at a time in any order.

    A frame's labels are held only until both of its neighbours in the clip have been seen,
    so predictions that arrive in clip order (windows, or frames one by one) keep a few
    frames in memory, not the split. With ``groups_of`` (the synth corruption groups) pairs
    are also counted as ``clean`` (two clean frames) or ``corrupted`` (at least one not);
    without it only ``all``.
    """

    def __init__(
        self,
        clips: Sequence[Sequence[int]],
        groups_of: Callable[[int], Sequence[str]] | None = None,
    ) -> None:
        self._before = {b: a for clip in clips for a, b in itertools.pairwise(clip)}
        self._after = {a: b for b, a in self._before.items()}
        self._groups_of = groups_of
        self._held: dict[int, tuple[Tensor, Tensor]] = {}
        self._waiting: dict[int, set[int]] = {}
        self._seen: set[int] = set()
        names = FLICKER_GROUPS if groups_of is not None else ("all",)
        self.flicker = {g: LabelFlicker() for g in names}

    def add(self, frame: int, labels: Tensor, truth: Tensor) -> None:
        """One frame's predicted labels and truth, each ``(H, W)``."""
        if frame in self._seen:
            raise ValueError(f"frame {frame} was predicted twice")
        self._seen.add(frame)
        mine = (labels.to(torch.uint8).cpu(), truth.to(torch.uint8).cpu())
        waiting: set[int] = set()
        before = self._before.get(frame)
        for neighbour in (before, self._after.get(frame)):
            if neighbour is None:
                continue
            if neighbour not in self._held:
                waiting.add(neighbour)
                continue
            theirs = self._held[neighbour]
            if neighbour == before:
                self._count(neighbour, frame, theirs, mine)
            else:
                self._count(frame, neighbour, mine, theirs)
            self._waiting[neighbour].discard(frame)
            if not self._waiting[neighbour]:
                del self._held[neighbour], self._waiting[neighbour]
        if waiting:
            self._held[frame] = mine
            self._waiting[frame] = waiting

    def _count(
        self, a: int, b: int, first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]
    ) -> None:
        groups = ["all"]
        if self._groups_of is not None:
            clean = "clean" in self._groups_of(a) and "clean" in self._groups_of(b)
            groups.append("clean" if clean else "corrupted")
        for group in groups:
            self.flicker[group].update(first[0], second[0], first[1], second[1])

    def summary(self) -> dict[str, dict[str, Any]]:
        """Flicker rate and stable-pixel count per pair group."""
        return {
            "flicker": {g: f.rate for g, f in self.flicker.items()},
            "stable_pixels": {g: f.stable for g, f in self.flicker.items()},
        }


@dataclass
class ClipScores:
    """What ``score_clips`` measured on one split."""

    matrices: dict[str, ConfusionMatrix]
    frames: dict[str, int]
    flicker: dict[str, LabelFlicker] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Plain numbers: mIoU and frame count per group, flicker rate per pair group."""
        return {
            "mIoU": {g: m.summary()["mIoU"] for g, m in self.matrices.items()},
            "frames": dict(self.frames),
            "flicker": {g: f.rate for g, f in self.flicker.items()},
            "stable_pixels": {g: f.stable for g, f in self.flicker.items()},
        }


def score_clips(
    model: CCNet,
    index: SplitIndex,
    groups: Sequence[str],
    groups_of: Callable[[int], Sequence[str]],
    *,
    clip_length: int | None = None,
    settings: InferenceSettings | None = None,
    progress: bool = True,
) -> ClipScores:
    """mIoU per frame group and label flicker per pair group of ``model`` on a clip split.

    Args:
        model: a CCNet (scored frame by frame) or CCNet3D (scored in windows).
        index: a clip split.
        groups: the frame groups to report, e.g. ``training.synth.CORRUPTION_GROUPS``.
        groups_of: a frame's groups (``all`` first, ``clean`` or ``corrupted``, the kind).
        clip_length: CCNet3D window length (default: the model's); 1 scores frames alone.
        settings: how to turn a frame into scores (default: whole frames).
        progress: show a progress bar.
    """
    if index.clips is None:
        raise ValueError(f"{index.root}: not a clip data set (temporal scores need clips)")
    dataset = build_eval_dataset(index, model, clip_length)
    flicker = ClipFlicker(index.clips, groups_of)
    reported = set(groups)
    matrices, frames = evaluate_groups(
        model,
        dataset,
        index.num_classes,
        groups,
        lambda frame: [g for g in groups_of(frame) if g in reported],
        settings or InferenceSettings(),
        progress=progress,
        on_frame=flicker.add,
    )
    return ClipScores(matrices, frames, flicker.flicker)
