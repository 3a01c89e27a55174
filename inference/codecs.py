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
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ccnet.inference.overlay import (
    blend_overlay,  # re-exported: overlays are composed in service.overlay
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "IMAGE_MEDIA_TYPES",
    "IMAGE_SUFFIXES",
    "ImageDecodeError",
    "ImageTooLargeError",
    "blend_overlay",
    "decode_image",
    "encode_mask_png",
    "pil_to_rgb",
    "read_image",
]

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: larger than any camera image, far below a bomb
_DRAFT_SLACK = 7 / 8  # a draft-decoded JPEG may be this much below the requested side

# What ``decode_image`` reads: declared upload media types (others are answered 415) and the
# file suffixes ``ccnet predict`` picks up in folders.
IMAGE_MEDIA_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/jpg",
        "image/pjpeg",
        "image/webp",
        "image/bmp",
        "image/x-ms-bmp",
        "image/gif",
        "image/tiff",
    }
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# The Pillow plugins allowed to read input, whatever the bytes look like: the formats above.
# Without the list Pillow tries every plugin it has (PCX, TGA, DDS, JPEG 2000, ICNS, and EPS,
# which runs Ghostscript), each a parser exposed to strangers' bytes for nothing we document.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image."""


class ImageTooLargeError(ValueError):
    """The image declares more pixels than allowed."""


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *, downscale_to: int | None = None
) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array, orientation applied.

    Args:
        downscale_to: the long side the caller will scale the image down to. A JPEG is then
            decoded at the coarsest DCT scale (1/2, 1/4 or 1/8, Pillow's draft mode) whose
            long side is still at least 7/8 of this, so the result may be smaller than the file's
            declared size: a 12 MP photo for a 1024 px model decodes about 7x faster. Callers
            that must answer at the original size take it from the header first.

    Raises:
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels.
        ImageDecodeError: empty, truncated, corrupt or not an image.
    """
    if not data:
        raise ImageDecodeError("empty input: zero bytes")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}×{height} = {width * height} pixels, "
                    f"more pixels than the limit of {max_pixels}"
                )
            if image.format == "JPEG":
                _check_jpeg_scan(data, width, height)
            if downscale_to is not None and image.format == "JPEG":
                image.draft(None, _draft_size(width, height, downscale_to))
            image.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES stays False)
            return _to_rgb(_oriented(image))
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own, larger limit fired first
        raise ImageTooLargeError(
            f"image has more pixels than the limit of {max_pixels}: {error}"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "not a decodable image: the format is not one of " + ", ".join(IMAGE_FORMATS)
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"not a decodable image: {error}") from None


def _draft_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The smallest (w, h) a draft decode may return: the size after scaling the long side
    to 7/8 of ``side``. The slack lets a 4032 px photo decode at 1/4 (1008 px) for 1024
    instead of at 1/2 (four times the pixels); the model then sees a 1.6 % smaller image.
    Rotation by EXIF keeps the long side, so the stored axes are fine."""
    scale = min(1.0, side * _DRAFT_SLACK / max(width, height, 1))
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


_HUFFMAN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive (Huffman)
_START_OF_SCAN = 0xDA


def _check_jpeg_scan(data: bytes, width: int, height: int) -> None:
    """Refuse a Huffman-coded JPEG with too few scan bytes for its declared size.

    libjpeg fills a scan that ends early (a file cut short, an end marker appended) with grey
    and only warns, which Pillow does not report: a 1 KB file claiming 6000×6000 would decode,
    slowly, to 36 M grey pixels. Every 8×8 luma block costs at least one bit of Huffman-coded
    DC, so fewer than ``blocks / 8`` bytes after the first start-of-scan cannot be a whole
    image. (Arithmetic-coded JPEGs can be smaller and are not checked.)
    """
    huffman, offset, end = False, 2, len(data)
    while offset + 4 <= end and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            offset += 2
            continue
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker in _HUFFMAN_FRAMES:
            huffman = True
        if marker == _START_OF_SCAN:
            if not huffman:
                return
            scan_bytes = end - (offset + 2 + length)
            blocks = -(-width // 8) * -(-height // 8)
            if scan_bytes * 8 < blocks:
                raise ImageDecodeError(
                    f"truncated JPEG: {max(scan_bytes, 0)} bytes of image data cannot hold the "
                    f"{width}×{height} pixels its header declares"
                )
            return
        offset += 2 + length


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


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """An opened PIL image as ``decode_image`` would return it (orientation, mode, alpha)."""
    image.load()
    return _to_rgb(_oriented(image))


_ORIENTATION = 0x0112


def _oriented(image: Image.Image) -> Image.Image:
    """The image as shown: EXIF orientation applied. Without an orientation to apply it is
    returned as is (``exif_transpose`` would copy it: 160 MB for a 40 MP photo)."""
    if image.getexif().get(_ORIENTATION, 1) in (1, None):
        return image
    return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping (integer arithmetic: a
        # float64 copy would be 8 bytes per pixel)
        values = np.asarray(image)
        peak = int(values.max()) or 1
        wide = np.uint32 if values.dtype.itemsize <= 2 else np.float32  # 65535 × 255 fits
        gray = (values.astype(wide) * 255 // peak).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # composite on white, what a viewer shows for transparent pixels
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    # a read-only view of Pillow's export, not a second copy: nothing writes into decoded input
    return np.asarray(image, dtype=np.uint8)


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
