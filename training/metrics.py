"""Confusion-matrix segmentation metrics: per-class IoU, mIoU, pixel accuracy.

One ``K×K`` int64 matrix (rows = truth, columns = prediction) is accumulated over the whole
split and the metrics are computed once at the end — the standard (Cityscapes, mmseg)
definition, where a large image weighs more than a small one. A class that appears in neither
truth nor prediction has no IoU (NaN, ``None`` in JSON) and is left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ccnet.training.datasets.index import IGNORE_INDEX

__all__ = ["SCORES_ARE", "ConfusionMatrix"]

# JSON carries IoU, mIoU and pixel accuracy as fractions; this label travels with them, so a
# reader never has to guess (every line meant for people prints percent)
SCORES_ARE = "fractions of 1 (mIoU 0.855 = 85.5 %)"


class ConfusionMatrix:
    """Accumulates predictions against ground truth.

    Args:
        num_classes: K.
        ignore_index: truth value that is not scored.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add class-id predictions against targets of the same shape (any layout)."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} vs target {tuple(target.shape)}"
            )
        prediction, target = prediction.flatten().long().cpu(), target.flatten().long().cpu()
        valid = target != self.ignore_index
        if (target[valid] >= self.num_classes).any() or (target[valid] < 0).any():
            raise ValueError(f"target ids outside 0..{self.num_classes - 1}")
        k = self.num_classes
        codes = target[valid] * k + prediction[valid]
        self.matrix += torch.bincount(codes, minlength=k * k).view(k, k)

    def merge(self, other: ConfusionMatrix | Tensor) -> None:
        """Add another matrix (e.g. from another process)."""
        self.matrix += other.matrix if isinstance(other, ConfusionMatrix) else other.to(torch.int64)

    def iou(self) -> Tensor:
        """(K,) float64 IoU per class; NaN where the class is absent from truth and prediction."""
        m = self.matrix.to(torch.float64)
        true_positive = m.diag()
        union = m.sum(0) + m.sum(1) - true_positive
        return torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)

    def mean_iou(self) -> float:
        """Mean of the defined per-class IoUs (NaN if none is defined)."""
        iou = self.iou()
        defined = iou[~iou.isnan()]
        return float(defined.mean()) if defined.numel() else math.nan

    def pixel_accuracy(self) -> float:
        """Correct pixels / scored pixels."""
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else math.nan

    def summary(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``mIoU``, ``per_class_iou`` (name -> IoU or None), ``pixel_acc``, ``pixels``."""
        names = (
            list(class_names)
            if class_names is not None
            else [str(i) for i in range(self.num_classes)]
        )
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} names for {self.num_classes} classes")
        return {
            "mIoU": _plain(self.mean_iou()),
            "per_class_iou": {
                name: _plain(float(v)) for name, v in zip(names, self.iou().tolist(), strict=True)
            },
            "pixel_acc": _plain(self.pixel_accuracy()),
            "pixels": int(self.matrix.sum()),
        }


def _plain(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)
