"""Overlays: class colours blended onto images and clips, with an optional legend.

Blending runs over row blocks of at most ``_BLOCK_PIXELS`` pixels, so its float32
temporaries stay a few megabytes whatever the image or clip size: the only full-size array
is the uint8 result (the service budgets a request's memory from its pixel count, and a
300-frame clip of float temporaries would be twelve times the clip itself). The legend is
drawn once and pasted, so a clip pays for it once, not per frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["blend_overlay", "compose_overlay", "legend_patch", "paste_legend"]

_BLOCK_PIXELS = 1 << 18  # 256 Ki pixels per block: ~3 MiB of float32 per temporary
_LEGEND_ROWS = 12  # classes listed at most; the rest are summed into "+N more"


def blend_overlay(
    rgb: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """The image (H, W, 3) or clip (T, H, W, 3) with each pixel's class colour blended in.

    ``rgb`` is uint8, ``mask`` holds class ids of the same leading shape; ``alpha`` is the
    colours' opacity. Returns a new uint8 array of ``rgb``'s shape.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if rgb.shape[:-1] != mask.shape or rgb.shape[-1] != 3:
        raise ValueError(f"image {rgb.shape} and mask {mask.shape} do not match")
    colours = np.asarray(palette, dtype=np.float32) * np.float32(alpha)  # (K, 3)
    keep = np.float32(1.0 - alpha)
    flat_rgb = rgb.reshape(-1, 3)
    flat_mask = mask.reshape(-1)
    out = np.empty_like(flat_rgb, dtype=np.uint8)
    for start in range(0, flat_mask.size, _BLOCK_PIXELS):
        block = slice(start, start + _BLOCK_PIXELS)
        blended = flat_rgb[block].astype(np.float32)
        blended *= keep
        blended += colours[flat_mask[block]]
        blended += np.float32(0.5)
        np.clip(blended, 0, 255, out=blended)
        out[block] = blended  # truncation after +0.5: rounding to nearest
    return out.reshape(rgb.shape)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _share(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction >= 0.005 else "<1%"  # present, however little


def legend_patch(
    entries: Sequence[tuple[str, Sequence[int], float]], image_height: int
) -> np.ndarray:
    """An RGB legend (h, w, 3) uint8: a swatch, the class name and its share per entry.

    Args:
        entries: (name, colour, fraction) of the classes to list, largest first.
        image_height: the picture's height; the text is sized to it (8..20 px).
    """
    size = int(np.clip(image_height // 28, 8, 20))
    font = _font(size)
    shown = list(entries[:_LEGEND_ROWS])
    lines = [f"{name} {_share(fraction)}" for name, _, fraction in shown]
    if len(entries) > len(shown):
        rest = sum(fraction for _, _, fraction in entries[len(shown) :])
        lines.append(f"+{len(entries) - len(shown)} more {_share(rest)}")
    pad, row = max(2, size // 4), size + max(2, size // 4)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max((int(probe.textlength(line, font=font)) for line in lines), default=0)
    width = pad * 3 + size + text_width
    height = pad * 2 + row * len(lines)
    patch = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(patch)
    for index, line in enumerate(lines):
        top = pad + index * row
        if index < len(shown):
            colour = tuple(int(c) for c in shown[index][1])
            draw.rectangle((pad, top, pad + size - 1, top + size - 1), fill=colour)
        draw.text((pad * 2 + size, top), line, fill=(240, 240, 240), font=font)
    return np.asarray(patch)


def paste_legend(pictures: np.ndarray, patch: np.ndarray) -> None:
    """Put ``patch`` (opaque, so it reads on any picture) in the top-left corner of an image
    (H, W, 3) or of every frame of a clip (T, H, W, 3), in place; cropped to the picture."""
    height = min(patch.shape[0], pictures.shape[-3])
    width = min(patch.shape[1], pictures.shape[-2])
    pictures[..., :height, :width, :] = patch[:height, :width]


def compose_overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Sequence[int]],
    classes: Sequence[str],
    *,
    alpha: float = 0.5,
    legend: bool = False,
) -> np.ndarray:
    """``blend_overlay``, plus (``legend=True``) a legend of the classes present, by share."""
    overlay = blend_overlay(rgb, mask, palette, alpha)
    if legend:
        counts = np.bincount(mask.reshape(-1), minlength=len(palette))
        order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
        entries = [
            (
                classes[i] if i < len(classes) else str(i),
                palette[i],
                float(counts[i]) / mask.size,
            )
            for i in order
        ]
        paste_legend(overlay, legend_patch(entries, int(rgb.shape[-3])))
    return overlay
