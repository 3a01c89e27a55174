"""The offline inference library under everything that segments: the Python API
(``Segmenter``, ``ClipSegmenter``), the pipeline (scale, pad, map back), clip windows, image and
video codecs, renderers, the backends (torch, onnxruntime, tensorrt), the precision policy and
gate, the bundled demo models and ``ccnet predict``.

It knows nothing of HTTP or training and reads no environment: ``LoadOptions`` says how to
load a model. Names below are loaded on first use, so ``import ccnet.inference`` stays light::

    from ccnet.inference import Segmenter
    seg = Segmenter.from_file("ccnet-tiny")
    seg("photo.jpg").mask
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccnet._lazy import lazy_exports

if TYPE_CHECKING:
    from ccnet.inference.options import LoadOptions
    from ccnet.inference.segmenter import (
        ClipSegmentation,
        ClipSegmenter,
        Segmentation,
        Segmenter,
    )

_EXPORTS = {
    "ClipSegmentation": "ccnet.inference.segmenter",
    "ClipSegmenter": "ccnet.inference.segmenter",
    "Segmentation": "ccnet.inference.segmenter",
    "Segmenter": "ccnet.inference.segmenter",
    "LoadOptions": "ccnet.inference.options",
}

__all__ = ["ClipSegmentation", "ClipSegmenter", "LoadOptions", "Segmentation", "Segmenter"]

__getattr__, __dir__ = lazy_exports("ccnet.inference", _EXPORTS, globals())
