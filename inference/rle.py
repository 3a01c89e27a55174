"""COCO run-length encoding of binary masks, compatible with pycocotools' compressed strings.

Runs are counted over the mask in column-major order, starting with a (possibly empty) run
of zeros; the counts are then delta-coded against the count two places back and written as
5-bit groups in printable characters. Tests check the result against pycocotools itself.

When pycocotools is installed its C encoder runs instead (a fragmented 2048×1024 mask: about
ten times faster than the pure version, bench figures in BENCHMARKS.md); the pure version stays
as the fallback, and tests hold the two to identical strings.
"""

from __future__ import annotations

import numpy as np

try:  # optional accelerator: the C encoder of the COCO API
    from pycocotools import mask as _coco_mask

    has_pycocotools = True
except ImportError:  # pragma: no cover - exercised where pycocotools is absent
    _coco_mask = None
    has_pycocotools = False

__all__ = ["decode_rle", "encode_rle", "encode_rle_reference", "has_pycocotools", "run_lengths"]


def run_lengths(binary: np.ndarray) -> list[int]:
    """Alternating run lengths (zeros first) of a 2D mask in column-major order."""
    flat = np.asarray(binary, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def _compress(counts: list[int]) -> str:
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def encode_rle(binary: np.ndarray) -> dict[str, object]:
    """``{"size": [h, w], "counts": str}`` for a 2D boolean mask (pycocotools when present)."""
    if binary.ndim != 2:
        raise ValueError(f"RLE encodes 2D masks, got shape {binary.shape}")
    if _coco_mask is None or binary.size == 0:
        return encode_rle_reference(binary)
    height, width = binary.shape
    # pycocotools wants a Fortran-ordered uint8 (H, W, N) stack
    encoded = _coco_mask.encode(np.asfortranarray(np.asarray(binary, dtype=np.uint8)[:, :, None]))
    return {"size": [int(height), int(width)], "counts": encoded[0]["counts"].decode("ascii")}


def encode_rle_reference(binary: np.ndarray) -> dict[str, object]:
    """The pure NumPy/Python encoder (the fallback, and what ``encode_rle`` is tested against)."""
    if binary.ndim != 2:
        raise ValueError(f"RLE encodes 2D masks, got shape {binary.shape}")
    height, width = binary.shape
    return {"size": [int(height), int(width)], "counts": _compress(run_lengths(binary))}


def decode_rle(rle: dict[str, object]) -> np.ndarray:
    """The boolean mask back from ``encode_rle``'s output."""
    height, width = (int(v) for v in rle["size"])  # type: ignore[union-attr]
    text = str(rle["counts"])
    counts: list[int] = []
    position = 0
    while position < len(text):
        x, shift, more = 0, 0, True
        while more:
            c = ord(text[position]) - 48
            x |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            position += 1
            shift += 1
            if not more and c & 0x10:
                x |= -1 << (5 * shift)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat = np.zeros(height * width, dtype=bool)
    offset = 0
    for i, count in enumerate(counts):
        if i % 2:
            flat[offset : offset + count] = True
        offset += count
    return flat.reshape((height, width), order="F")
