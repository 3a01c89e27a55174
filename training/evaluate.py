"""Scoring a model on a split: whole-image, sliding-window or multi-scale + flip inference.

Modes (``InferenceSettings.mode``):

``whole``       one forward pass on the full image (the model accepts any size).
``slide``       ``tile``×``tile`` windows every ``stride`` pixels (the last row/column aligned
                to the border; images smaller than a tile are padded with the mean, i.e. 0
                after normalisation), logits averaged where windows overlap: for large images
                or models trained on crops.
``multiscale``  the image resized by each of ``scales`` (and mirrored when ``flip``), softmax
                probabilities resized back and averaged (whole-image pass per scale, or sliding
                windows when ``tile`` is set and the scaled image exceeds it).

Clips work the same way: the last two axes are always (H, W); a CCNet3D scores windows of
``clip_length`` frames that cover every frame once, a 2D CCNet scores clips frame by frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from model import CCNet, CCNet3D
from training.datasets import ClipDataset, FrameDataset, SplitIndex
from training.metrics import ConfusionMatrix
from training.transforms import EvalTransform

__all__ = [
    "InferenceMode",
    "InferenceSettings",
    "build_eval_dataset",
    "evaluate_model",
    "predict_scores",
]

InferenceMode = Literal["whole", "slide", "multiscale"]


@dataclass(frozen=True)
class InferenceSettings:
    """How to turn an input into class scores.

    Args:
        mode: ``whole``, ``slide`` or ``multiscale`` (module docstring).
        tile: sliding-window size in pixels (``slide``; optional for ``multiscale``).
        stride: step between windows; default two thirds of the tile.
        scales: resize factors for ``multiscale``.
        flip: also run the mirrored input in ``multiscale``.
    """

    mode: InferenceMode = "whole"
    tile: int | None = None
    stride: int | None = None
    scales: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5)
    flip: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide", "multiscale"):
            raise ValueError(f"mode must be whole, slide or multiscale, got {self.mode!r}")
        if self.mode == "slide" and self.tile is None:
            raise ValueError("slide mode needs a tile size")
        if self.tile is not None and self.tile < 1:
            raise ValueError(f"tile must be >= 1, got {self.tile}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")

    @property
    def window_stride(self) -> int:
        assert self.tile is not None
        return self.stride if self.stride is not None else max(1, math.ceil(self.tile * 2 / 3))


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of the last two axes of (B, C, H, W) or (B, C, T, H, W)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dim() == 5:
        batch = x.shape[0]
        frames = x.transpose(1, 2).flatten(0, 1)
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
        return frames.unflatten(0, (batch, -1)).transpose(1, 2)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _positions(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _slide(model: CCNet, x: Tensor, tile: int, stride: int) -> Tensor:
    height, width = x.shape[-2:]
    pad_h, pad_w = max(tile - height, 0), max(tile - width, 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    padded_h, padded_w = x.shape[-2:]
    total: Tensor | None = None
    count = torch.zeros(padded_h, padded_w, device=x.device)
    for top in _positions(padded_h, tile, stride):
        for left in _positions(padded_w, tile, stride):
            logits = model(x[..., top : top + tile, left : left + tile])
            if total is None:
                total = logits.new_zeros((*logits.shape[:-2], padded_h, padded_w))
            total[..., top : top + tile, left : left + tile] += logits
            count[top : top + tile, left : left + tile] += 1
    assert total is not None
    return (total / count)[..., :height, :width]


def _forward(model: CCNet, x: Tensor, settings: InferenceSettings) -> Tensor:
    too_large = settings.tile is not None and max(x.shape[-2:]) > settings.tile
    if settings.mode == "slide" or too_large:
        assert settings.tile is not None
        return _slide(model, x, settings.tile, settings.window_stride)
    return model(x)


@torch.no_grad()
def predict_scores(model: CCNet, x: Tensor, settings: InferenceSettings) -> Tensor:
    """Class scores at input size: logits (whole, slide) or mean probabilities (multiscale).

    Args:
        model: CCNet (x is (B, 3, H, W)) or CCNet3D (x is (B, 3, T, H, W)), in eval mode.
        x: the normalised input.
        settings: the inference mode.
    """
    if settings.mode != "multiscale":
        return _forward(model, x, settings)
    size = (x.shape[-2], x.shape[-1])
    total: Tensor | None = None
    for scale in settings.scales:
        scaled_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        scaled = _resize(x, scaled_size)
        for mirrored in (False, True) if settings.flip else (False,):
            inputs = scaled.flip(-1) if mirrored else scaled
            probs = _forward(model, inputs, settings).softmax(dim=1)
            probs = _resize(probs.flip(-1) if mirrored else probs, size)
            total = probs if total is None else total + probs
    assert total is not None
    return total


def build_eval_dataset(index: SplitIndex, model: CCNet, clip_length: int | None = None) -> Dataset:
    """Evaluation samples for ``model``: clip windows for a CCNet3D on clip data, else frames.

    Args:
        index: the split.
        model: decides between frames and windows (and supplies the normalisation).
        clip_length: window length for CCNet3D; default the model configuration's.
    """
    config = model.config
    if config is None:
        raise ValueError("the model has no config (build it with build_model or load a checkpoint)")
    transform = EvalTransform(config.normalization)
    if isinstance(model, CCNet3D) and index.clips is not None:
        return ClipDataset(index, clip_length or config.clip_length, transform, stride=None)
    return FrameDataset(index, transform)


def _batches(dataset: Dataset, shard: tuple[int, int], workers: int) -> Iterator[dict]:
    rank, world = shard
    subset = Subset(dataset, list(range(rank, len(dataset), world)))  # type: ignore[arg-type]
    # a private generator: creating the loader must not draw from the global RNG (exact resume)
    loader = DataLoader(subset, batch_size=1, num_workers=workers, generator=torch.Generator())
    return iter(loader)


def evaluate_model(
    model: CCNet,
    dataset: Dataset,
    num_classes: int,
    settings: InferenceSettings = InferenceSettings(),
    *,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    workers: int = 0,
    progress: bool = True,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over ``dataset`` (this process's shard of it).

    A CCNet3D given single frames sees them as clips of one frame; clip windows count only
    their ``count`` frames. The model is put in eval mode (and left there).
    """
    model.eval()
    matrix = ConfusionMatrix(num_classes)
    video = isinstance(model, CCNet3D)
    total = len(range(shard[0], len(dataset), shard[1]))  # type: ignore[arg-type]
    for batch in tqdm(
        _batches(dataset, shard, workers),
        total=total,
        desc="evaluating",
        unit="sample",
        disable=not progress,
        leave=False,
    ):
        x = batch["image"].to(device)
        target = batch["mask"].to(device)
        single_frame = video and x.dim() == 4
        if single_frame:
            x = x.unsqueeze(2)
        scores = predict_scores(model, x, settings)
        prediction = scores.argmax(dim=1)
        if single_frame:
            prediction = prediction[:, 0]
        if "count" in batch:  # (B, T): drop frames another window already scored
            keep = batch["count"].to(device)
            prediction, target = prediction[keep], target[keep]
        matrix.update(prediction, target)
    return matrix
