"""From decoded pixels to class masks: the resize/pad policy around any inference backend.

Every backend sees the same thing: RGB float32 in 0..255, scaled so the long side is at most
``max_side`` (cost grows with area, and criss-cross attention's with area × (H + W)) and then
padded by edge replication to a multiple of the network stride (8), so feature cells line up
with pixels and requests of similar size share a batch shape. The mask is cropped back to the
scaled size, and resized to the input's size with nearest-neighbour so class ids stay ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# one stride for the server and the exported image graph (``export.image_graph``)
from ccnet.export.runtime.image_interface import STRIDE

__all__ = [
    "STRIDE",
    "PreparedClip",
    "PreparedImage",
    "class_statistics",
    "labels_from_logits",
    "labels_to_size",
    "logits_to_size",
    "prepare_clip",
    "prepare_image",
    "probabilities_from_logits",
    "scale_frames",
    "scaled_size",
]


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


def prepare_image(
    rgb: np.ndarray, max_side: int, size: tuple[int, int] | None = None
) -> PreparedImage:
    """Scale and pad one (H, W, 3) uint8 RGB image for inference.

    Args:
        size: the (H, W) the result is mapped back to, when ``rgb`` was decoded smaller than
            the file (a JPEG draft decode, ``codecs.decode_image(downscale_to=...)``); by
            default ``rgb``'s own size.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    size = (int(rgb.shape[0]), int(rgb.shape[1])) if size is None else size
    scaled = scaled_size(*size, max_side)
    pixels = _scale_and_pad(rgb, scaled).transpose(2, 0, 1)
    return PreparedImage(np.ascontiguousarray(pixels, dtype=np.float32), size, scaled)


def scale_frames(
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
    small, size, scaled = scale_frames(frames, max_side)
    pixels = np.ascontiguousarray(small.transpose(3, 0, 1, 2), dtype=np.float32)
    return PreparedClip(pixels, size, scaled)


def labels_to_size(
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
    return labels_to_size(labels, scaled, size)


def probabilities_from_logits(
    logits: np.ndarray, scaled: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """Class probabilities (K, H, W) float32 at the input's size from (K, Hp, Wp) logits.

    Softmax over classes on the network's grid, cropped to ``scaled`` and resized bilinearly to
    ``size``; each resized pixel is a convex blend of probability vectors, so it still sums to 1.
    """
    cropped = logits[:, : scaled[0], : scaled[1]].astype(np.float32, copy=False)
    exp = np.exp(cropped - cropped.max(axis=0, keepdims=True))
    probs = exp / exp.sum(axis=0, keepdims=True)
    if scaled == size:
        return np.ascontiguousarray(probs)
    resize = (size[1], size[0])
    return np.stack(
        [np.asarray(Image.fromarray(p).resize(resize, Image.Resampling.BILINEAR)) for p in probs]
    )


def logits_to_size(
    logits: np.ndarray, scaled: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """(K, H, W) float32 logits at the input's size: cropped to ``scaled``, resized bilinearly
    (only when the image was scaled down for inference)."""
    cropped = np.ascontiguousarray(logits[:, : scaled[0], : scaled[1]], dtype=np.float32)
    if scaled == size:
        return cropped
    resize = (size[1], size[0])
    return np.stack(
        [np.asarray(Image.fromarray(c).resize(resize, Image.Resampling.BILINEAR)) for c in cropped]
    )


def class_statistics(mask: np.ndarray, classes: list[str]) -> list[dict[str, object]]:
    """Pixel count and fraction of every class present in ``mask``, by class id."""
    # counted in blocks: bincount widens its input to int64, 8 bytes per pixel of a whole clip
    flat = mask.reshape(-1)
    counts = np.zeros(len(classes), dtype=np.int64)
    for start in range(0, flat.size, 1 << 20):
        block = np.bincount(flat[start : start + (1 << 20)], minlength=len(classes))
        if len(block) > len(counts):
            counts = np.pad(counts, (0, len(block) - len(counts)))
        counts[: len(block)] += block
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
