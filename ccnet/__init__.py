"""CCNet semantic segmentation: models, training, export, offline inference and the service.

The repository's top-level folders are this package's subpackages (``model/`` is
``ccnet.model``, ``inference/`` is ``ccnet.inference``, …); see the README's "Layout".

The public API, loaded on first use so that ``import ccnet`` (and the ``ccnet`` command)
stays light::

    from ccnet import Segmenter
    seg = Segmenter.from_file("ccnet-tiny")   # a bundled demo name, or a .pt/.onnx/.engine file
    result = seg("photo.jpg")                 # result.mask: (H, W) uint8 class ids
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccnet import model as _model  # light: its names load on first use
from ccnet._lazy import lazy_exports

if TYPE_CHECKING:
    from ccnet.inference.segmenter import (
        ClipSegmentation,
        ClipSegmenter,
        Segmentation,
        Segmenter,
    )
    from ccnet.model import (
        CCNet,
        CCNet3D,
        ModelConfig,
        Normalization,
        build_model,
        convert_checkpoint,
        get_config,
        list_models,
        load_checkpoint,
        resize_logits,
        save_checkpoint,
    )

# public name -> the module that defines it (the model's names from its own table)
_EXPORTS = {
    **dict.fromkeys(
        ("ClipSegmentation", "ClipSegmenter", "Segmentation", "Segmenter"),
        "ccnet.inference.segmenter",
    ),
    **dict.fromkeys(_model.__all__, "ccnet.model"),
}

__all__ = [
    "CCNet",
    "CCNet3D",
    "ClipSegmentation",
    "ClipSegmenter",
    "ModelConfig",
    "Normalization",
    "Segmentation",
    "Segmenter",
    "build_model",
    "convert_checkpoint",
    "get_config",
    "list_models",
    "load_checkpoint",
    "resize_logits",
    "save_checkpoint",
]

__getattr__, __dir__ = lazy_exports("ccnet", _EXPORTS, globals())
