"""The one bilinear resize of logits, so every consumer samples the grid the model was trained on.

``align_corners`` changes where the coarse logits are sampled: with ``True`` the corner cells of
the 1/8 grid sit on the corner pixels of the image; with ``False`` cell centres sit at pixel
centres. A network trained with one convention and evaluated with the other is shifted by up
to half a feature cell (4 pixels at output stride 8) near the borders, which moves boundaries
and flips labels. The model's forward, the losses, evaluation (whole, slide, multi-scale), the
service's map-back and the ONNX export all call ``resize_logits`` with the checkpoint's
``ModelConfig.align_corners``; in an ONNX graph it becomes a ``Resize`` node whose
``coordinate_transformation_mode`` is ``align_corners`` or ``half_pixel``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["resize_logits"]


def resize_logits(logits: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    """Bilinear resize of the last two axes (H, W) of ``(B, K, H, W)`` or ``(B, K, T, H, W)``.

    Args:
        logits: class scores (or probabilities); clips keep their frame axis.
        size: the target ``(H, W)``.
        align_corners: the model's sampling convention (``ModelConfig.align_corners``).

    Returns:
        The resized tensor, or ``logits`` itself when it already has that size.
    """
    target = tuple(size[-2:])
    concrete = all(type(n) is int for n in (*logits.shape[-2:], *target))
    if concrete and tuple(logits.shape[-2:]) == target:  # never while tracing symbolic sizes
        return logits
    if logits.dim() == 5:  # (B, K, T, H, W): resize every frame as a 2D image
        batch = logits.shape[0]
        frames = logits.transpose(1, 2).flatten(0, 1)  # (B·T, K, H, W)
        frames = F.interpolate(frames, size=target, mode="bilinear", align_corners=align_corners)
        return frames.unflatten(0, (batch, -1)).transpose(1, 2)
    if logits.dim() != 4:
        raise ValueError(
            f"resize_logits expects (B, K, H, W) or (B, K, T, H, W), got {logits.dim()}-D"
        )
    return F.interpolate(logits, size=target, mode="bilinear", align_corners=align_corners)
