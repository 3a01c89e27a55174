"""Initialise a model from another checkpoint's matching weights (``--init``).

Typical uses: CCNet3D from a trained 2D CCNet of the same backbone (the 3D attention's 1×1×1
convolutions take the 2D 1×1 kernels, which differ only by a singleton axis), or a model for a
new data set from one trained on another (the classifiers, whose class count differs, are
skipped and stay freshly initialised).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ccnet.model.checkpoint import read_checkpoint

__all__ = ["load_matching_weights"]


def load_matching_weights(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``path`` whose name and element count match ``model``'s.

    Returns:
        ``(loaded, skipped)`` parameter/buffer names of ``model``.

    Raises:
        FileNotFoundError, ValueError: unreadable checkpoint, or not a single tensor matched.
    """
    source = read_checkpoint(path)["state_dict"]
    target = model.state_dict()
    loaded, skipped = [], []
    with torch.no_grad():
        for name, tensor in target.items():
            other = source.get(name)
            if other is None or other.numel() != tensor.numel():
                skipped.append(name)
                continue
            squeezed = [s for s in other.shape if s != 1]
            if squeezed != [s for s in tensor.shape if s != 1]:
                skipped.append(name)
                continue
            tensor.copy_(other.reshape(tensor.shape))
            loaded.append(name)
    if not loaded:
        raise ValueError(f"{path}: no weight matches the model (a different architecture?)")
    return loaded, skipped
