"""Training augmentation and evaluation preprocessing, for images and clips alike.

Everything works on a stack of frames ``(T, 3, H, W)`` uint8 with masks ``(T, H, W)``; an image
is a clip of one frame. Random parameters are drawn once per call from the sample's own
generator and applied to every frame, so a clip keeps its geometry (same scale, crop and flip
on all frames) and a sample's augmentation is reproducible from its seed alone.

Order (as in the official CCNet recipe): photometric jitter on 0..255 values, random scale,
normalisation with the model's statistics, padding to the crop size (image 0 = the mean after
normalisation, mask 255 = ignore), random crop, horizontal flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ccnet.model.zoo import Normalization
from ccnet.training.datasets.index import IGNORE_INDEX

__all__ = ["EvalTransform", "TrainTransform"]

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


@dataclass(frozen=True)
class EvalTransform:
    """Normalisation only: frames keep their size (sliding window / multi-scale happen later)."""

    normalization: Normalization

    def __call__(
        self, images: Tensor, masks: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        return self.normalization.normalize(images), masks.long()


@dataclass(frozen=True)
class TrainTransform:
    """Random scale, ignore-padded crop, flip and photometric jitter, then normalisation.

    Args:
        normalization: the model's input statistics (``model.config.normalization``).
        crop_size: (height, width) of the output.
        scale_range: the random scale factor's bounds (1.0, 1.0 disables scaling).
        flip: random horizontal flip with probability 0.5.
        jitter: strength of brightness/contrast/saturation jitter (each factor is drawn from
            ``[1 - jitter, 1 + jitter]``); 0 disables it.
    """

    normalization: Normalization
    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    def __call__(
        self, images: Tensor, masks: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        if generator is None:
            raise ValueError("TrainTransform needs a generator (sample keys with seeds)")
        x = images.float()
        if self.jitter > 0:
            x = self._jitter(x, generator)
        x, masks = self._scale(x, masks, generator)
        x = self.normalization.normalize(x)
        x, masks = self._crop(x, masks, generator)
        if self.flip and float(torch.rand((), generator=generator)) < 0.5:
            x, masks = x.flip(-1), masks.flip(-1)
        return x.contiguous(), masks.long().contiguous()

    def _jitter(self, x: Tensor, generator: torch.Generator) -> Tensor:
        j = self.jitter
        brightness = _uniform(generator, 1 - j, 1 + j)
        contrast = _uniform(generator, 1 - j, 1 + j)
        saturation = _uniform(generator, 1 - j, 1 + j)
        x = x * brightness
        grey = (x * _LUMA).sum(dim=1, keepdim=True)  # (T, 1, H, W)
        mean = grey.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        grey = (x * _LUMA).sum(dim=1, keepdim=True)
        x = grey + (x - grey) * saturation
        return x.clamp(0, 255)

    def _scale(self, x: Tensor, masks: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        low, high = self.scale_range
        scale = _uniform(generator, low, high)
        if low == high == 1.0:
            return x, masks
        height, width = x.shape[-2:]
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        if size == (height, width):
            return x, masks
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].to(
            masks.dtype
        )
        return x, masks

    def _crop(self, x: Tensor, masks: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        crop_h, crop_w = self.crop_size
        height, width = x.shape[-2:]
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        if pad_h or pad_w:  # pad bottom/right: image 0 (the mean), mask ignore
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
            masks = F.pad(masks, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
            height, width = x.shape[-2:]
        top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
        left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
        return (
            x[..., top : top + crop_h, left : left + crop_w],
            masks[..., top : top + crop_h, left : left + crop_w],
        )
