"""Hot spots outside the network: JPEG decoding (draft mode) and COCO RLE (pycocotools).

* A 12 MP photograph (scikit-image's astronaut upscaled to 4032×3024, JPEG quality 90) for a
  1024 px model: full decode + resize vs ``decode_image(..., downscale_to=1024)`` (Pillow's
  DCT-domain draft decode) + resize, and how far the two results are apart.
* COCO RLE of a fragmented 2048×1024 mask (random, half set) and of a compact one: the pure
  encoder (``encode_rle_reference``) vs ``encode_rle`` (pycocotools' C encoder when installed),
  checked identical.

Usage:
    python -m bench.hotspots
"""

from __future__ import annotations

import io
import sys

import numpy as np
from PIL import Image

from bench._measure import format_table, time_interleaved
from ccnet.inference.codecs import decode_image
from ccnet.inference.rle import encode_rle, encode_rle_reference, has_pycocotools


def _resized(rgb: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(rgb.shape[:2])
    size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


def jpeg_rows(side: int = 1024) -> list[list[str]]:
    import skimage.data

    photo = Image.fromarray(skimage.data.astronaut()).resize((4032, 3024), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    times = time_interleaved(
        {
            "full": lambda: _resized(decode_image(data), side),
            "draft": lambda: _resized(decode_image(data, downscale_to=side), side),
        },
        rounds=7,
        warmup=1,
    )
    full, draft = (
        _resized(decode_image(data), side),
        _resized(decode_image(data, downscale_to=side), side),
    )
    shape = decode_image(data, downscale_to=side).shape
    diff = np.abs(full.astype(np.int16)[: draft.shape[0], : draft.shape[1]] - draft).mean()
    return [
        ["JPEG 4032×3024 → 1024, full decode", f"{times['full']:.1f}", "1.00x", ""],
        [
            f"JPEG, draft decode ({shape[1]}×{shape[0]})",
            f"{times['draft']:.1f}",
            f"{times['full'] / times['draft']:.1f}x",
            f"mean |diff| {diff:.2f} levels",
        ],
    ]


def rle_rows() -> list[list[str]]:
    rng = np.random.default_rng(0)
    fragmented = rng.random((1024, 2048)) < 0.5
    compact = np.zeros((1024, 2048), dtype=bool)
    compact[100:900, 300:1500] = True
    rows = []
    for name, mask in (("fragmented", fragmented), ("compact", compact)):
        same = encode_rle(mask) == encode_rle_reference(mask)
        times = time_interleaved(
            {"pure": lambda m=mask: encode_rle_reference(m), "fast": lambda m=mask: encode_rle(m)},
            rounds=7,
            warmup=1,
        )
        rows.append([f"RLE {name} 2048×1024, pure", f"{times['pure']:.1f}", "1.00x", ""])
        rows.append(
            [
                f"RLE {name}, {'pycocotools' if has_pycocotools else 'pure (no pycocotools)'}",
                f"{times['fast']:.1f}",
                f"{times['pure'] / times['fast']:.1f}x",
                "identical" if same else "DIFFERENT",
            ]
        )
    return rows


def main() -> None:
    rows = jpeg_rows() + rle_rows()
    print(format_table(["step", "ms", "vs baseline", "check"], rows))


if __name__ == "__main__":
    sys.exit(main())
