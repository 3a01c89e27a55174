"""Decoding images and masks with errors that name the file.

Images are read as 8-bit RGB whatever their mode (grey, palette, RGBA). Masks must be one band
of 8-bit values (mode ``L`` or ``P``; a palette PNG's *indices* are the class ids): an RGB mask
is a colour visualisation, not class ids, and is refused rather than guessed at.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "image_size", "read_image", "read_mask"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_MASK_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: unreadable {what} ({e})") from e


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, checked without decoding its pixels.

    ``verify`` walks the file's structure (PNG chunk checksums, the end marker), which catches
    truncated and corrupt files at a fraction of the cost of decoding them.
    """
    with _open(path, "image") as image:
        size = image.size
        try:
            image.verify()
        except Exception as e:  # PIL raises a variety of types for broken files
            raise ValueError(f"{path}: unreadable image ({e})") from e
    return size


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    try:
        with _open(path, "image") as image:
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError) as e:  # truncated or corrupt data surfaces while decoding
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable image ({e})") from e


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 raw mask values."""
    try:
        with _open(path, "mask") as mask:
            if mask.mode not in _MASK_MODES:
                raise ValueError(
                    f"{path}: a mask must be single-band class ids (mode L or P), got mode "
                    f"{mask.mode}"
                )
            values = np.array(mask)
    except (OSError, SyntaxError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable mask ({e})") from e
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(f"{path}: mask values must be 0..255, got {values.max()}")
        values = values.astype(np.uint8)
    return values
