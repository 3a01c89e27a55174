"""Validation pictures: the input, the truth and the prediction side by side, in class colours.

A number says how good a model is; a picture says how it fails (a class bleeding into its
neighbour, a missed thin object, a whole frame wrong). ``overlay_strip`` renders one evaluated
sample as ``input | truth | prediction``, the masks blended over the image; TensorBoard shows
a few per validation, so the pictures of step 500 and step 3000 can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ccnet.model.zoo import Normalization
from ccnet.training.datasets.index import IGNORE_INDEX
from ccnet.training.evaluate import Prediction

__all__ = ["colour_labels", "denormalize", "overlay_strip"]

_ALPHA = 0.55  # weight of the class colour over the image


def denormalize(x: torch.Tensor, normalization: Normalization) -> np.ndarray:
    """(H, W, 3) uint8 RGB from one normalised (3, H, W) input (inverse of ``normalize``)."""
    mean = torch.tensor(normalization.mean).view(3, 1, 1)
    std = torch.tensor(normalization.std).view(3, 1, 1)
    values = x.detach().float().cpu() * std + mean
    if normalization.channel_order == "BGR":
        values = values.flip(0)
    rgb = values * (255.0 / normalization.value_scale)
    return rgb.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def colour_labels(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W, 3) uint8 colours of (H, W) class ids; ignore (255) is black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    lut[IGNORE_INDEX] = 0
    return lut[labels.astype(np.uint8)]


def _blend(rgb: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    colours = colour_labels(labels, palette).astype(np.float32)
    mixed = (1 - _ALPHA) * rgb.astype(np.float32) + _ALPHA * colours
    mixed[labels == IGNORE_INDEX] = rgb[labels == IGNORE_INDEX]  # unlabelled: the image itself
    return mixed.round().astype(np.uint8)


def overlay_strip(
    predicted: Prediction, normalization: Normalization, palette: Sequence[Sequence[int]]
) -> np.ndarray:
    """(H, 3·W + 8, 3) uint8: input, truth and prediction of the sample's first scored frame."""
    image = predicted.image[0]  # (3, H, W) or (3, T, H, W)
    if image.dim() == 4:
        image = image[:, _first_scored_offset(predicted)]
    rgb = denormalize(image, normalization)
    truth = predicted.target[0].cpu().numpy()
    labels = predicted.labels[0].cpu().numpy()
    gap = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    panels = [rgb, gap, _blend(rgb, truth, palette), gap, _blend(rgb, labels, palette)]
    return np.concatenate(panels, axis=1)


def _first_scored_offset(predicted: Prediction) -> int:
    """Position in the window of the first scored frame (windows score consecutive frames,
    the moved-back last window its final ones)."""
    frames = predicted.image.shape[2]
    return frames - len(predicted.frames)
