"""From decoded pixels to class masks: the resize/pad policy around any inference backend.

Every backend sees the same thing: RGB float32 in 0..255, scaled so the long side is at most
``max_side`` (cost grows with area, and criss-cross attention's with area × (H + W)) and then
padded by edge replication to a multiple of the network stride (8), so feature cells line up
with pixels and requests of similar size share a batch shape. The mask is cropped back to the
scaled size, and resized to the input's size with nearest-neighbour so class ids stay ids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .backends.base import InferenceBackend

__all__ = [
    "STRIDE",
    "ClipSegmentation",
    "ImageSegmenter",
    "PreparedClip",
    "PreparedImage",
    "Segmentation",
    "class_statistics",
    "labels_from_logits",
    "prepare_clip",
    "prepare_image",
    "segment_clip",
]

STRIDE = 8  # the networks' output stride


@dataclass(frozen=True)
class PreparedImage:
    """Network input for one image and what is needed to map the result back."""

    pixels: np.ndarray  # (3, Hp, Wp) float32, 0..255, padded to the stride
    size: tuple[int, int]  # the input's (H, W)
    scaled: tuple[int, int]  # (h, w) the image was scaled to, before padding


@dataclass(frozen=True)
class PreparedClip:
    """Network input for a clip: frames scaled and padded like images."""

    pixels: np.ndarray  # (3, T, Hp, Wp) float32
    size: tuple[int, int]
    scaled: tuple[int, int]


@dataclass(frozen=True)
class Segmentation:
    """A mask at the input's size and what produced it."""

    mask: np.ndarray  # (H, W) uint8 class ids
    classes: list[str]
    palette: list[list[int]]
    inference_ms: float

    def class_fractions(self) -> dict[str, float]:
        """Fraction of the image covered by each class present."""
        return {s["name"]: s["fraction"] for s in class_statistics(self.mask, self.classes)}


def scaled_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) with the long side at most ``max_side``, aspect kept."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _pad_amount(length: int) -> int:
    return -length % STRIDE


def _scale_and_pad(rgb: np.ndarray, scaled: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 → (Hp, Wp, 3) uint8 scaled to ``scaled`` and edge-padded."""
    if scaled != rgb.shape[:2]:
        image = Image.fromarray(rgb).resize((scaled[1], scaled[0]), Image.Resampling.BILINEAR)
        rgb = np.asarray(image)
    padding = ((0, _pad_amount(scaled[0])), (0, _pad_amount(scaled[1])), (0, 0))
    if any(after for _, after in padding):
        rgb = np.pad(rgb, padding, mode="edge")
    return rgb


def prepare_image(rgb: np.ndarray, max_side: int) -> PreparedImage:
    """Scale and pad one (H, W, 3) uint8 RGB image for inference."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    size = (int(rgb.shape[0]), int(rgb.shape[1]))
    scaled = scaled_size(*size, max_side)
    pixels = _scale_and_pad(rgb, scaled).transpose(2, 0, 1)
    return PreparedImage(np.ascontiguousarray(pixels, dtype=np.float32), size, scaled)


def _scaled_frames(
    frames: np.ndarray, max_side: int
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """(T, Hp, Wp, 3) uint8 frames scaled and padded alike, the input size, the scaled size."""
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    size = (int(frames.shape[1]), int(frames.shape[2]))
    scaled = scaled_size(*size, max_side)
    return np.stack([_scale_and_pad(frame, scaled) for frame in frames]), size, scaled


def prepare_clip(frames: np.ndarray, max_side: int) -> PreparedClip:
    """Scale and pad (T, H, W, 3) uint8 frames; every frame the same way."""
    small, size, scaled = _scaled_frames(frames, max_side)
    pixels = np.ascontiguousarray(small.transpose(3, 0, 1, 2), dtype=np.float32)
    return PreparedClip(pixels, size, scaled)


def _labels_to_size(
    labels: np.ndarray, scaled: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """(…, Hp, Wp) labels cropped to ``scaled`` and resized (nearest) to ``size``."""
    labels = labels[..., : scaled[0], : scaled[1]]
    if scaled == size:
        return labels
    resize = (size[1], size[0])
    frames = labels.reshape(-1, *scaled)
    resized = [
        np.asarray(Image.fromarray(f).resize(resize, Image.Resampling.NEAREST)) for f in frames
    ]
    return np.stack(resized).reshape(*labels.shape[:-2], *size)


def labels_from_logits(
    logits: np.ndarray, scaled: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """Class ids at the input's size from (K, Hp, Wp) logits (or (K, T, Hp, Wp) for clips).

    Returns (H, W) or (T, H, W) uint8.
    """
    labels = logits[..., : scaled[0], : scaled[1]].argmax(axis=0).astype(np.uint8)
    return _labels_to_size(labels, scaled, size)


def class_statistics(mask: np.ndarray, classes: list[str]) -> list[dict[str, object]]:
    """Pixel count and fraction of every class present in ``mask``, by class id."""
    counts = np.bincount(mask.ravel(), minlength=len(classes))
    total = mask.size
    return [
        {
            "id": i,
            "name": classes[i] if i < len(classes) else str(i),
            "pixels": int(c),
            "fraction": float(c) / total,
        }
        for i, c in enumerate(counts)
        if c > 0
    ]


class ImageSegmenter:
    """One image at a time through a backend (``ccnet predict``; the service batches instead).

    Args:
        backend: any inference backend for an image model.
        max_side: images whose long side exceeds this are scaled down for inference.
    """

    def __init__(self, backend: InferenceBackend, *, max_side: int = 1024) -> None:
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        self.backend = backend
        self.max_side = max_side

    def segment(self, rgb: np.ndarray) -> Segmentation:
        """Class ids for every pixel of ``rgb`` (H, W, 3) uint8."""
        prepared = prepare_image(rgb, self.max_side)
        began = time.perf_counter()
        logits = self.backend.infer(prepared.pixels[None])[0]
        elapsed = (time.perf_counter() - began) * 1e3
        mask = labels_from_logits(logits, prepared.scaled, prepared.size)
        info = self.backend.info
        return Segmentation(mask, info.classes, info.palette, elapsed)


@dataclass(frozen=True)
class ClipSegmentation:
    """Masks for every frame of a clip and how they were made."""

    masks: np.ndarray  # (T, H, W) uint8 class ids
    inference_ms: float
    window: int
    overlap: int


def segment_clip(
    backend: InferenceBackend,
    frames: np.ndarray,
    *,
    max_side: int,
    overlap: int | None = None,
) -> ClipSegmentation:
    """Run a video model over (T, H, W, 3) uint8 frames in overlapping windows.

    The window is the model's clip length; neighbouring windows share ``overlap`` frames
    (half a window by default) and their per-frame probabilities are blended, so a frame's
    label draws on context from both sides and window edges do not flicker. Memory stays
    bounded by the window: frames are kept as scaled uint8 and converted per window, and a
    frame's label is decided once the last window covering it has run.
    """
    from . import clips

    small, size, scaled = _scaled_frames(frames, max_side)  # (T, Hp, Wp, 3) uint8
    window = backend.info.window or 4
    overlap = window // 2 if overlap is None else min(overlap, window - 1)

    def infer(start: int, stop: int) -> np.ndarray:
        pixels = small[start:stop].transpose(3, 0, 1, 2).astype(np.float32)  # (3, t, Hp, Wp)
        return backend.infer(pixels[None])[0]

    began = time.perf_counter()
    labels = clips.segment_clip(len(small), infer, window=window, overlap=overlap)
    elapsed = (time.perf_counter() - began) * 1e3
    labels = _labels_to_size(labels, scaled, size)
    return ClipSegmentation(np.ascontiguousarray(labels), elapsed, window, overlap)
