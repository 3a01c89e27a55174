"""Segmentation heads: the recurrent criss-cross attention (RCCA) head and the auxiliary FCN head.

One RCCA head serves images and clips: the attention module is passed in
(``CrissCrossAttention`` or ``CrissCrossAttention3d``), and with a clip ``(B, C, T, H, W)`` the
convolutions run per frame (2D weights, so image checkpoints fit) while the attention runs across
time, height and width.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from ccnet.model.backbones.resnet import ActLayer, NormLayer
from ccnet.model.cca import CrissCrossAttention

__all__ = [
    "AttentionLayer",
    "ConvNormAct",
    "FCNHead",
    "RCCAHead",
    "batch_to_frames",
    "frames_to_batch",
]

AttentionLayer = Callable[[int], nn.Module]
"""Builds a shape-preserving attention block for a channel count."""

_RELU: ActLayer = partial(nn.ReLU, inplace=True)


def frames_to_batch(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B·T, C, H, W), a clip's frames adjacent: 2D layers run per frame."""
    return x.transpose(1, 2).flatten(0, 1)


def batch_to_frames(x: Tensor, batch: int) -> Tensor:
    """(B·T, C, H, W) -> (B, C, T, H, W); the inverse of ``frames_to_batch`` (a view)."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2)


class ConvNormAct(nn.Sequential):
    """3×3 conv, normalisation, activation; children named ``conv``, ``norm``, ``act``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        bias: conv bias; redundant before a norm layer, but the official auxiliary head has one.
        norm_layer: normalisation factory.
        act_layer: activation factory.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bias: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _RELU,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
        self.norm = norm_layer(out_channels)
        self.act = act_layer()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class RCCAHead(nn.Module):
    """Recurrent criss-cross attention head (CCNet, Fig. 2).

    ``conva`` reduces the channels, the same attention block runs ``recurrence`` times (shared
    weights: after two passes every position has seen every other one), ``convb`` refines, the
    result is concatenated after the input features and fused by ``bottleneck``, then dropout and
    a 1×1 ``classifier`` give the logits.

    Args:
        in_channels: channels of the backbone features.
        channels: channels after the bottleneck (the classifier's input).
        num_classes: output channels.
        inter_channels: channels of the attention path; default ``in_channels // 4``.
        recurrence: attention passes (the paper's R; 2 is enough for full context).
        attention_layer: builds the attention block; ``CrissCrossAttention`` for images,
            ``CrissCrossAttention3d`` for clips.
        norm_layer: normalisation factory.
        act_layer: activation factory (official: LeakyReLU(0.01); mmseg: ReLU).
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        inter_channels: int | None = None,
        recurrence: int = 2,
        attention_layer: AttentionLayer = CrissCrossAttention,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _RELU,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if recurrence < 0:
            raise ValueError(f"recurrence must be >= 0, got {recurrence}")
        inter = inter_channels if inter_channels is not None else in_channels // 4
        self.recurrence = recurrence
        self.conva = ConvNormAct(in_channels, inter, norm_layer=norm_layer, act_layer=act_layer)
        self.cca = attention_layer(inter)
        self.convb = ConvNormAct(inter, inter, norm_layer=norm_layer, act_layer=act_layer)
        self.bottleneck = ConvNormAct(
            in_channels + inter, channels, norm_layer=norm_layer, act_layer=act_layer
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, K, H, W), or for a clip (B, C, T, H, W) -> (B, K, T, H, W)."""
        return self.forward_with_context(x)[0]

    def forward_with_context(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the RCCA output (after the last attention pass, before ``convb``).

        The second tensor, ``(N, inter, H, W)`` or ``(B, inter, T, H, W)``, is what the
        category-consistent loss (TPAMI) shapes; inference needs only the logits.
        """
        if x.dim() == 4:
            context = self._attend(self.conva(x))
            return self._classify(x, context), context
        batch = x.shape[0]
        x = frames_to_batch(x)
        context = self._attend(batch_to_frames(self.conva(x), batch))  # (B, inter, T, h, w)
        logits = batch_to_frames(self._classify(x, frames_to_batch(context)), batch)
        return logits, context

    def _attend(self, x: Tensor) -> Tensor:
        for _ in range(self.recurrence):
            x = self.cca(x)  # the same module each time: weights are shared across passes
        return x

    def _classify(self, features: Tensor, context: Tensor) -> Tensor:
        """Per frame: convb, concat after the input (both peers' order), bottleneck, classify."""
        fused = self.bottleneck(torch.cat([features, self.convb(context)], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """Auxiliary head: 3×3 conv-norm-act, dropout, 1×1 classifier (deep supervision on layer3).

    Args:
        in_channels: channels of the features it reads.
        channels: channels of the 3×3 conv.
        num_classes: output channels.
        conv_bias: bias on the 3×3 conv (the official CCNet has one, mmseg not).
        norm_layer: normalisation factory.
        act_layer: activation factory.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        conv_bias: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _RELU,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv = ConvNormAct(
            in_channels, channels, bias=conv_bias, norm_layer=norm_layer, act_layer=act_layer
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, K, H, W)."""
        return self.classifier(self.dropout(self.conv(x)))
