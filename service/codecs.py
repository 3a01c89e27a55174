"""Image decoding and mask encoding, shared by the HTTP service and ``ccnet predict``.

Decoding is defensive because its input comes from strangers: the pixel count is checked from
the header before any pixel is decoded (a 40000×40000 PNG is a few hundred bytes), truncated
or corrupt files are rejected, EXIF orientation is applied and every mode (palette,
grayscale, RGBA, 16-bit) becomes 8-bit RGB. Bytes after a complete image (a JPEG's end
marker, a PNG's IEND) are ignored, as browsers do: phones append data there (motion photos
carry a whole MP4 after the JPEG).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "ImageTooLargeError",
    "blend_overlay",
    "decode_image",
    "encode_mask_png",
    "read_image",
]

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: larger than any camera image, far below a bomb


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image."""


class ImageTooLargeError(ValueError):
    """The image declares more pixels than allowed."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array, orientation applied.

    Raises:
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels.
        ImageDecodeError: empty, truncated, corrupt or not an image.
    """
    if not data:
        raise ImageDecodeError("empty input: zero bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}×{height} = {width * height} pixels, "
                    f"more pixels than the limit of {max_pixels}"
                )
            image.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES stays False)
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own, larger limit fired first
        raise ImageTooLargeError(
            f"image has more pixels than the limit of {max_pixels}: {error}"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a decodable image: the format is not recognised") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"not a decodable image: {error}") from None


def read_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``decode_image`` for a file; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageDecodeError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return decode_image(data, max_pixels)
    except ImageDecodeError as error:
        raise ImageDecodeError(f"{path}: {error}") from None
    except ImageTooLargeError as error:
        raise ImageTooLargeError(f"{path}: {error}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping
        values = np.asarray(image, dtype=np.float64)
        peak = values.max() or 1.0
        gray = np.clip(values / peak * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # composite on white, what a viewer shows for transparent pixels
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _flat_palette(palette: Sequence[Sequence[int]]) -> list[int]:
    flat = [int(v) for colour in palette for v in colour]
    return flat + [0] * (768 - len(flat))


def encode_mask_png(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """One-band PNG: pixel value = class id, the class colours attached as its palette."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if len(palette) > 256:
        raise ValueError(f"a PNG palette holds 256 colours, got {len(palette)} classes")
    image = Image.fromarray(mask.astype(np.uint8)).convert("P")
    image.putpalette(_flat_palette(palette))
    buffer = io.BytesIO()
    # zlib level 3: a third of level 6's time (the default) for masks a third larger; masks are
    # flat regions, so both are small, and encoding is on every request's path
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def blend_overlay(
    rgb: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """The image with each pixel's class colour blended in at opacity ``alpha``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = np.asarray(palette, dtype=np.float32)[mask]
    blended = rgb.astype(np.float32) * (1.0 - alpha) + colours * alpha
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
