"""Criss-cross attention (CCNet, ICCV 2019): each pixel attends to its column and its row.

``criss_cross_attention`` is the parameter-free op; ``CrissCrossAttention`` is the module with
query/key/value projections and a learnable residual scale. The parameter names
(``query_conv``, ``key_conv``, ``value_conv``, ``gamma``) are those of the official CCNet code
and of mmcv/mmsegmentation, so their weights load at this level without renaming.

The 3D variant (``model.cca3d``) shares the dispatcher and the block defined here. The
implementation (``model.config``) is resolved once per call: by the op for a bare call, by the
block for a block's call (it needs the answer before its projections run, for their layout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ccnet.model.axial import (
    attention_block_forward,
    axial_attention_fast,
    axial_attention_reference,
    check_axial_inputs,
)
from ccnet.model.config import cuda_op, resolve_cca_implementation

__all__ = ["AxialAttentionBlock", "CrissCrossAttention", "criss_cross_attention"]

Implementation = Literal["reference", "fast", "cuda"]


def run_axial_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spatial_dims: int,
    op: str,
    implementation: Implementation | None = None,
) -> Tensor:
    """Validate the operands and run ``implementation`` (default: what ``model.config`` picks).

    Args:
        q: queries (B, Cq, *spatial).
        k: keys (B, Cq, *spatial).
        v: values (B, C, *spatial).
        spatial_dims: 2 or 3.
        op: the public op's name, for error messages.
        implementation: already resolved by the caller (a block), or None to resolve here.
    """
    if not torch.jit.is_tracing():
        check_axial_inputs(q, k, v, spatial_dims=spatial_dims, op=op)
    if implementation is None:
        implementation = resolve_cca_implementation(q, k, v)
    if implementation == "cuda":
        return cuda_op(spatial_dims)(q, k, v)
    if implementation == "fast":
        return axial_attention_fast(q, k, v)
    return axial_attention_reference(q, k, v)


def criss_cross_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attend from every pixel to its whole column and row, the pixel itself counted once.

    Args:
        q: queries (B, Cq, H, W).
        k: keys (B, Cq, H, W).
        v: values (B, C, H, W).

    Returns:
        (B, C, H, W): per pixel, the softmax over the H + W - 1 energies ``q·k`` of its
        column and row, applied to the matching values. No gamma, no residual. The memory
        layout of the result depends on the implementation (see ``model.config``).
    """
    return run_axial_attention(q, k, v, 2, "criss_cross_attention")


class AxialAttentionBlock(nn.Module):
    """``gamma * attention(q(x), k(x), v(x)) + x`` with 1×1 projections; 2D and 3D share it.

    ``gamma`` starts at zero so a freshly inserted block is the identity and learns how much
    context to mix in, as in the paper.

    Args:
        in_channels: channels of the input; queries and keys use ``in_channels // 8``.
    """

    # set by each dimensionality: the projection conv type, the public op and its rank
    conv: ClassVar[type[nn.Conv2d] | type[nn.Conv3d]]
    op: ClassVar[Callable[[Tensor, Tensor, Tensor], Tensor]]
    spatial_dims: ClassVar[int]

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        reduced = max(in_channels // 8, 1)
        self.in_channels = in_channels
        self.query_conv = self.conv(in_channels, reduced, kernel_size=1)
        self.key_conv = self.conv(in_channels, reduced, kernel_size=1)
        self.value_conv = self.conv(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        # Resolved once, from what q, k, v will be: x's device and dtype (autocast applied by
        # the resolver) and whether autograd will track them (x or the projection weights).
        implementation = resolve_cca_implementation(x, *self.parameters())
        name, dims = self.op.__name__, self.spatial_dims

        def op(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return run_axial_attention(q, k, v, dims, name, implementation)

        projections = (self.query_conv, self.key_conv, self.value_conv)
        channels_last = implementation == "fast" and not torch.is_grad_enabled()
        return attention_block_forward(x, projections, self.gamma, op, channels_last=channels_last)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"


class CrissCrossAttention(AxialAttentionBlock):
    """Criss-cross attention block for (B, C, H, W) features."""

    conv = nn.Conv2d
    op = staticmethod(criss_cross_attention)
    spatial_dims = 2
