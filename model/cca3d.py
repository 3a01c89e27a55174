"""Criss-cross attention over time, height and width (CCNet3D, TPAMI 2020).

Each voxel of a ``(T, H, W)`` clip feature attends to its time line, its column and its row,
itself counted once (T + H + W - 2 keys). With T = 1 this is exactly the 2D op.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model._axial import (
    attention_block_forward,
    axial_attention_fast,
    axial_attention_reference,
    check_axial_inputs,
)
from model.config import cuda_op, resolve_cca_implementation

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
    if not torch.jit.is_tracing():
        check_axial_inputs(q, k, v, spatial_dims=3, op="criss_cross_attention_3d")
    implementation = resolve_cca_implementation(q, k, v)
    if implementation == "cuda":
        return cuda_op(3)(q, k, v)
    if implementation == "fast":
        return axial_attention_fast(q, k, v)
    return axial_attention_reference(q, k, v)


class CrissCrossAttention3d(nn.Module):
    """3D criss-cross attention block: ``gamma * attention3d(q(x), k(x), v(x)) + x``.

    Parameter names and initialisation mirror ``CrissCrossAttention``; the projections are
    1×1×1 convolutions, so a 2D block's weights carry over by adding a singleton kernel axis.

    Args:
        in_channels: channels of the input; queries and keys use ``in_channels // 8``.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        reduced = max(in_channels // 8, 1)
        self.in_channels = in_channels
        self.query_conv = nn.Conv3d(in_channels, reduced, kernel_size=1)
        self.key_conv = nn.Conv3d(in_channels, reduced, kernel_size=1)
        self.value_conv = nn.Conv3d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        projections = (self.query_conv, self.key_conv, self.value_conv)
        return attention_block_forward(x, projections, self.gamma, criss_cross_attention_3d)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"
