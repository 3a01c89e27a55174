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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ccnet.model import CCNet, CCNet3D, resize_logits
from ccnet.model.zoo import get_recipe, list_models
from ccnet.training.datasets import ClipDataset, FrameDataset, SplitIndex
from ccnet.training.metrics import ConfusionMatrix
from ccnet.training.transforms import EvalTransform

__all__ = [
    "InferenceMode",
    "InferenceSettings",
    "Prediction",
    "build_eval_dataset",
    "default_tile",
    "evaluate_groups",
    "evaluate_model",
    "predict_scores",
    "predictions",
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


def _resize(x: Tensor, size: tuple[int, int], model: CCNet) -> Tensor:
    """Bilinear resize of the last two axes on the model's grid (``model.resize_logits``).

    Used for the multi-scale inputs as well as the scores: the official multi-scale test also
    resizes the image corner to corner, as its logits are.
    """
    return resize_logits(x, size, model.align_corners)


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
        scaled = _resize(x, scaled_size, model)
        for mirrored in (False, True) if settings.flip else (False,):
            inputs = scaled.flip(-1) if mirrored else scaled
            probs = _forward(model, inputs, settings).softmax(dim=1)
            probs = _resize(probs.flip(-1) if mirrored else probs, size, model)
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


@dataclass(frozen=True)
class Prediction:
    """One evaluated sample: the frames it scores, their labels and the network input.

    Args:
        frames: the split's frame indices (``SplitIndex.frames``) of the scored frames.
        labels: (N, H, W) predicted class ids, one per scored frame.
        target: (N, H, W) true class ids (255 = ignore).
        image: the normalised input, (1, 3, H, W) or (1, 3, T, H, W) (for pictures).
    """

    frames: tuple[int, ...]
    labels: Tensor
    target: Tensor
    image: Tensor


def predictions(
    model: CCNet,
    dataset: Dataset,
    settings: InferenceSettings = InferenceSettings(),
    *,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    workers: int = 0,
    progress: bool = True,
) -> Iterator[Prediction]:
    """Every sample of this process's shard of ``dataset``, predicted: what evaluation, the
    corruption breakdown and the validation pictures all consume.

    A CCNet3D given single frames sees them as clips of one frame; a clip window yields only
    the frames it counts (``ClipDataset``: each frame once). The model is put in eval mode
    (and left there).
    """
    model.eval()
    video = isinstance(model, CCNet3D)
    clips = isinstance(dataset, ClipDataset)
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
        scores = predict_scores(model, x.unsqueeze(2) if single_frame else x, settings)
        labels = scores.argmax(dim=1)
        if single_frame:
            labels = labels[:, 0]
        index = int(batch["index"][0])
        if clips:  # (1, T, H, W): the window's frames, less those another window scored
            window, counted = dataset.windows[index]  # type: ignore[attr-defined]
            keep = batch["count"][0]
            frames = tuple(f for f, c in zip(window, counted, strict=True) if c)
            labels, target = labels[0][keep.to(device)], target[0][keep.to(device)]
        else:  # (1, H, W)
            frames = (index,)
        yield Prediction(frames, labels, target, x)


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

    Every frame is scored once (see ``predictions``). The model is left in eval mode.
    """
    matrix = ConfusionMatrix(num_classes)
    for predicted in predictions(
        model, dataset, settings, device=device, shard=shard, workers=workers, progress=progress
    ):
        matrix.update(predicted.labels, predicted.target)
    return matrix


def evaluate_groups(
    model: CCNet,
    dataset: Dataset,
    num_classes: int,
    groups: Sequence[str],
    groups_of: Callable[[int], Sequence[str]],
    settings: InferenceSettings = InferenceSettings(),
    *,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    workers: int = 0,
    progress: bool = True,
    on_frame: Callable[[int, Tensor, Tensor], None] | None = None,
) -> tuple[dict[str, ConfusionMatrix], dict[str, int]]:
    """A confusion matrix and a frame count for each of ``groups``, ``groups_of(frame)`` naming
    a frame's groups (e.g. ``["all", "corrupted", "blur"]``); the same pass as
    ``evaluate_model``. Every group gets its entries, seen or not, so processes can sum them.
    ``on_frame(frame, labels, target)`` sees every prediction too (label flicker needs them).
    """
    matrices = {group: ConfusionMatrix(num_classes) for group in groups}
    counts = dict.fromkeys(groups, 0)
    for predicted in predictions(
        model, dataset, settings, device=device, shard=shard, workers=workers, progress=progress
    ):
        for n, frame in enumerate(predicted.frames):
            for group in groups_of(frame):
                matrices[group].update(predicted.labels[n], predicted.target[n])
                counts[group] += 1
            if on_frame is not None:
                on_frame(frame, predicted.labels[n], predicted.target[n])
    return matrices, counts


def default_tile(meta: Mapping[str, Any]) -> int | None:
    """The sliding-window tile for a checkpoint: the crop it was trained on (its provenance),
    else its zoo model's recipe crop (converted official weights), else None."""
    train_config = meta.get("provenance", {}).get("train_config") or {}
    crop = train_config.get("crop_size")
    if isinstance(crop, int) and crop > 0:
        return crop
    name = meta.get("config", {}).get("name")
    if name in list_models():
        return get_recipe(name).crop_size
    return None
