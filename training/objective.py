"""The model and its losses as one module: what one training step differentiates.

DDP has to wrap whatever owns trainable weights: the category-consistent loss has its own
1×1 projection, so wrapping model and losses together keeps that projection's gradients
synchronised across processes as well. The forward pass runs under the caller's autocast;
the losses always run in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ccnet.model import CCNet
from ccnet.training.losses import CategoryConsistentLoss, SegmentationLoss

__all__ = ["TrainingObjective"]


class TrainingObjective(nn.Module):
    """``forward(images, target)`` -> named loss terms, ``"total"`` being the one to minimise.

    Args:
        model: CCNet or CCNet3D, in training mode.
        segmentation: main (+ auxiliary) loss.
        category_consistent: optional TPAMI loss on the RCCA output.
    """

    def __init__(
        self,
        model: CCNet,
        segmentation: SegmentationLoss,
        category_consistent: CategoryConsistentLoss | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.segmentation = segmentation
        self.category_consistent = category_consistent

    def forward(self, images: Tensor, target: Tensor) -> dict[str, Tensor]:
        outputs = self.model(images, return_context=self.category_consistent is not None)
        with torch.autocast(images.device.type, enabled=False):
            outputs = {name: value.float() for name, value in outputs.items()}
            terms = self.segmentation(outputs, target, align_corners=self.model.align_corners)
            total = terms["seg"]
            if self.category_consistent is not None:
                cc = self.category_consistent(outputs["context"], target)
                terms.update({f"cc_{name}": value for name, value in cc.items()})
                total = total + cc["cc"]
        terms["total"] = total
        return terms
