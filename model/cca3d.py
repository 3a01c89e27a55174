"""Criss-cross attention over time, height and width (CCNet3D, TPAMI 2020).

Each voxel of a ``(T, H, W)`` clip feature attends to its time line, its column and its row,
itself counted once (T + H + W - 2 keys). With T = 1 this is exactly the 2D op.
"""

from __future__ import annotations

from torch import Tensor, nn

from ccnet.model.cca import AxialAttentionBlock, run_axial_attention

__all__ = ["CrissCrossAttention3d", "criss_cross_attention_3d"]


def criss_cross_attention_3d(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attend from every voxel along time, height and width, itself counted once.

    Args:
        q: queries (B, Cq, T, H, W).
        k: keys (B, Cq, T, H, W).
        v: values (B, C, T, H, W).

    Returns:
        (B, C, T, H, W): the softmax over the T + H + W - 2 energies of each voxel's three
        lines, applied to the matching values. No gamma, no residual.
    """
    return run_axial_attention(q, k, v, 3, "criss_cross_attention_3d")


class CrissCrossAttention3d(AxialAttentionBlock):
    """3D criss-cross attention block for (B, C, T, H, W) features.

    Parameter names and initialisation mirror ``CrissCrossAttention``; the projections are
    1×1×1 convolutions, so a 2D block's weights carry over by adding a singleton kernel axis.
    """

    conv = nn.Conv3d
    op = staticmethod(criss_cross_attention_3d)
    spatial_dims = 3
