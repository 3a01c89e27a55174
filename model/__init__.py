"""CCNet in pure PyTorch: criss-cross attention, dilated ResNets, heads, model zoo, checkpoints.

Typical use::

    from ccnet.model import build_model, load_checkpoint, save_checkpoint

    model = build_model("ccnet-tiny", num_classes=5)
    save_checkpoint(model, {"classes": [...]}, "runs/tiny.pt")
    model, meta = load_checkpoint("runs/tiny.pt")

The names below are loaded on first use, so importing a light submodule (``ccnet.model.files``,
``ccnet.model.samples``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccnet._lazy import lazy_exports

if TYPE_CHECKING:
    from ccnet.model.ccnet import CCNet, CCNet3D
    from ccnet.model.checkpoint import load_checkpoint, save_checkpoint
    from ccnet.model.convert import convert_checkpoint
    from ccnet.model.model_config import ModelConfig, Normalization
    from ccnet.model.resize import resize_logits
    from ccnet.model.zoo import build_model, get_config, list_models

_EXPORTS = {
    "CCNet": "ccnet.model.ccnet",
    "CCNet3D": "ccnet.model.ccnet",
    "load_checkpoint": "ccnet.model.checkpoint",
    "save_checkpoint": "ccnet.model.checkpoint",
    "convert_checkpoint": "ccnet.model.convert",
    "ModelConfig": "ccnet.model.model_config",
    "Normalization": "ccnet.model.model_config",
    "resize_logits": "ccnet.model.resize",
    "build_model": "ccnet.model.zoo",
    "get_config": "ccnet.model.zoo",
    "list_models": "ccnet.model.zoo",
}

__all__ = [
    "CCNet",
    "CCNet3D",
    "ModelConfig",
    "Normalization",
    "build_model",
    "convert_checkpoint",
    "get_config",
    "list_models",
    "load_checkpoint",
    "resize_logits",
    "save_checkpoint",
]

__getattr__, __dir__ = lazy_exports("ccnet.model", _EXPORTS, globals())
