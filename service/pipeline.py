"""From an RGB image to a class mask: resize policy, normalisation, inference, resize back.

The model itself accepts any size, so no padding is needed; very large inputs are scaled down
so their long side is at most ``max_side`` (inference cost grows with area, and criss-cross
attention's with area × (H + W)), and the mask is scaled back with nearest-neighbour so class
ids stay ids.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model import CCNet, Normalization

__all__ = ["ImageSegmenter", "Segmentation"]


@dataclass(frozen=True)
class Segmentation:
    """A mask at the input's size and what produced it."""

    mask: np.ndarray  # (H, W) uint8 class ids
    classes: list[str]
    palette: list[list[int]]
    inference_ms: float

    def class_fractions(self) -> dict[str, float]:
        """Fraction of the image covered by each class present."""
        counts = np.bincount(self.mask.ravel(), minlength=len(self.classes))
        return {self.classes[i]: float(c) / self.mask.size for i, c in enumerate(counts) if c > 0}


class ImageSegmenter:
    """Segments (H, W, 3) uint8 RGB images with a CCNet and its checkpoint metadata.

    Args:
        model: a 2D CCNet; it is put in eval mode.
        meta: checkpoint metadata with ``classes``, ``palette`` and ``normalization``.
        max_side: images whose long side exceeds this are scaled down for inference.
        device: where to run.
    """

    def __init__(
        self,
        model: CCNet,
        meta: Mapping[str, Any],
        *,
        max_side: int = 1024,
        device: str | torch.device = "cpu",
    ) -> None:
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.classes = list(meta["classes"])
        self.palette = [list(c) for c in meta["palette"]]
        self.normalization = Normalization(**meta["normalization"])
        self.max_side = max_side

    def _inference_size(self, height: int, width: int) -> tuple[int, int]:
        scale = min(1.0, self.max_side / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    @torch.inference_mode()
    def segment(self, rgb: np.ndarray) -> Segmentation:
        """Class ids for every pixel of ``rgb`` (H, W, 3) uint8."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
        height, width = rgb.shape[:2]
        began = time.perf_counter()
        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).unsqueeze(0)
        x = self.normalization.normalize(x)
        size = self._inference_size(height, width)
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        logits = self.model(x)
        labels = logits.argmax(dim=1, keepdim=True).to(torch.uint8)
        if size != (height, width):
            labels = F.interpolate(labels.float(), size=(height, width), mode="nearest").byte()
        mask = labels[0, 0].cpu().numpy()  # the copy to host waits for the device
        elapsed = (time.perf_counter() - began) * 1e3
        return Segmentation(mask, self.classes, self.palette, elapsed)
