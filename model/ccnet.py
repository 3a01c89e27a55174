"""CCNet and CCNet3D: a dilated backbone, the RCCA head and an auxiliary head, logits at input size.

Return type. In eval mode ``forward`` returns the logits tensor only (what inference and ONNX
export want). In training mode it returns a dict, as torchvision's segmentation models do:
``{"out": logits, "aux": auxiliary logits}`` (``"aux"`` only when the model has an auxiliary
head); both are upsampled to the input size, so one loss function fits both.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

from torch import Tensor, nn

from ccnet.model.backbones.resnet import ActLayer, DilatedResNet, NormLayer
from ccnet.model.cca import CrissCrossAttention
from ccnet.model.cca3d import CrissCrossAttention3d
from ccnet.model.heads import AttentionLayer, FCNHead, RCCAHead, batch_to_frames, frames_to_batch
from ccnet.model.model_config import ModelConfig
from ccnet.model.resize import resize_logits

__all__ = ["CCNet", "CCNet3D"]

_RELU: ActLayer = partial(nn.ReLU, inplace=True)


class CCNet(nn.Module):
    """CCNet for images: ``(B, 3, H, W)`` -> logits ``(B, K, H, W)`` (see the module docstring).

    The RCCA head reads ``layer4``; the auxiliary head, used only for training, reads ``layer3``.

    Args:
        num_classes: K, the number of output classes.
        backbone: a ``DilatedResNet`` (or any module returning ``{"layer3", "layer4"}`` features
            and listing their channels in ``stage_channels``).
        recurrence: passes of the shared criss-cross attention block.
        head_channels: channels of the head's bottleneck (the classifier's input).
        inter_channels: channels of the attention path; default a quarter of layer4's.
        aux_channels: channels of the auxiliary head's conv; None for no auxiliary head.
        aux_conv_bias: bias on the auxiliary conv (official CCNet: yes; mmseg: no).
        norm_layer: normalisation factory for both heads.
        act_layer: activation factory for both heads.
        dropout: Dropout2d probability before each classifier.
        align_corners: grid of the final bilinear upsampling (``model.resize``); True for the
            official CCNet's weights, False for ours.

    Attributes:
        config: the ``ModelConfig`` it was built from (set by ``build_model``), else None.
    """

    # Built once per model; CCNet3D swaps in the 3D block, everything else is shared.
    attention_layer: ClassVar[AttentionLayer] = CrissCrossAttention

    def __init__(
        self,
        num_classes: int,
        backbone: DilatedResNet,
        recurrence: int = 2,
        *,
        head_channels: int = 512,
        inter_channels: int | None = None,
        aux_channels: int | None = 256,
        aux_conv_bias: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _RELU,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.config: ModelConfig | None = None
        self.backbone = backbone
        self.head = RCCAHead(
            backbone.stage_channels["layer4"],
            head_channels,
            num_classes,
            inter_channels=inter_channels,
            recurrence=recurrence,
            attention_layer=self.attention_layer,
            norm_layer=norm_layer,
            act_layer=act_layer,
            dropout=dropout,
        )
        self.aux_head: FCNHead | None = None
        if aux_channels is not None:
            self.aux_head = FCNHead(
                backbone.stage_channels["layer3"],
                aux_channels,
                num_classes,
                conv_bias=aux_conv_bias,
                norm_layer=norm_layer,
                act_layer=act_layer,
                dropout=dropout,
            )

    @property
    def recurrence(self) -> int:
        """Attention passes; may be changed after training (e.g. trained with 1, run with 2)."""
        return self.head.recurrence

    @recurrence.setter
    def recurrence(self, value: int) -> None:
        self.head.recurrence = value

    def resize_logits(self, logits: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
        """``model.resize.resize_logits`` with this model's ``align_corners``."""
        return resize_logits(logits, size, self.align_corners)

    def forward(self, x: Tensor, *, return_context: bool = False) -> Tensor | dict[str, Tensor]:
        """(B, 3, H, W) -> logits (B, K, H, W); in training mode ``{"out", "aux"}``.

        Args:
            x: the normalised images.
            return_context: also return the RCCA output under ``"context"``
                (B, inter, H/8, W/8), for the category-consistent loss; the result is then a
                dict in eval mode too.
        """
        if x.dim() != 4:
            raise ValueError(f"CCNet expects (B, 3, H, W), got shape {tuple(x.shape)}")
        size = x.shape[-2:]
        features = self.backbone(x)
        logits, context = self.head.forward_with_context(features["layer4"])
        out = self.resize_logits(logits, size)
        if not self.training and not return_context:
            return out
        result = {"out": out}
        if self.training and self.aux_head is not None:
            result["aux"] = self.resize_logits(self.aux_head(features["layer3"]), size)
        if return_context:
            result["context"] = context
        return result


class CCNet3D(CCNet):
    """CCNet for clips: ``(B, 3, T, H, W)`` -> logits ``(B, K, T, H, W)``.

    The 2D backbone runs on every frame (time folded into the batch); the RCCA head's attention
    runs across time, height and width, its convolutions per frame; the auxiliary head (training
    only) runs per frame. Any T >= 1 works. Constructor arguments are those of ``CCNet``.
    """

    attention_layer: ClassVar[AttentionLayer] = CrissCrossAttention3d

    def forward(self, x: Tensor, *, return_context: bool = False) -> Tensor | dict[str, Tensor]:
        """(B, 3, T, H, W) -> logits (B, K, T, H, W); in training mode ``{"out", "aux"}``.

        ``return_context`` adds the RCCA output (B, inter, T, H/8, W/8) as in ``CCNet``.
        """
        if x.dim() != 5:
            raise ValueError(f"CCNet3D expects (B, 3, T, H, W), got shape {tuple(x.shape)}")
        batch = x.shape[0]
        size = x.shape[-2:]
        features = self.backbone(frames_to_batch(x))  # per frame: (B·T, C, h, w)
        # (B, K, T, h, w) and (B, inter, T, h, w)
        logits, context = self.head.forward_with_context(batch_to_frames(features["layer4"], batch))
        out = self.resize_logits(logits, size)  # per frame
        if not self.training and not return_context:
            return out
        result = {"out": out}
        if self.training and self.aux_head is not None:
            aux = self.resize_logits(self.aux_head(features["layer3"]), size)
            result["aux"] = batch_to_frames(aux, batch)
        if return_context:
            result["context"] = context
        return result
