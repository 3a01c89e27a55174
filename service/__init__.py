"""Segmentation as a service and offline: image codecs, the inference pipeline, the HTTP app.

The Python API is importable from here (loaded on first use, so ``import service`` and the
``ccnet`` command stay light)::

    from service import Segmenter
    seg = Segmenter.from_file("model.pt")
    result = seg("photo.jpg")  # result.mask: (H, W) uint8 class ids
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .segmenter import ClipSegmentation, ClipSegmenter, Segmentation, Segmenter

__all__ = ["ClipSegmentation", "ClipSegmenter", "Segmentation", "Segmenter"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'service' has no attribute {name!r}")
