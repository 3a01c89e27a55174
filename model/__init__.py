"""CCNet in pure PyTorch: criss-cross attention, dilated ResNets, heads, model zoo, checkpoints.

Typical use::

    from model import build_model, load_checkpoint, save_checkpoint

    model = build_model("ccnet-tiny", num_classes=5)
    save_checkpoint(model, {"classes": [...]}, "runs/tiny.pt")
    model, meta = load_checkpoint("runs/tiny.pt")
"""

from model.ccnet import CCNet, CCNet3D
from model.checkpoint import load_checkpoint, save_checkpoint
from model.convert import convert_checkpoint
from model.model_config import ModelConfig, Normalization
from model.resize import resize_logits
from model.zoo import build_model, get_config, list_models

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
