"""Losses: cross-entropy, OHEM cross-entropy, auxiliary weighting, category-consistent loss.

All losses take logits ``(B, K, H, W)`` or, for clips, ``(B, K, T, H, W)`` with targets of the
same layout minus K (255 = ignore), and compute in float32 whatever the autocast dtype.
``SegmentationLoss`` also accepts logits at a coarser size (the peers' networks return 1/8):
they are upsampled to the target with ``model.resize_logits`` and the model's
``align_corners``, as the official criterion does.

Auxiliary loss, as the official criterion (``CriterionOhemDSN``): with ``criterion="ohem"`` the
main output gets OHEM and the auxiliary output plain cross-entropy, weighted 0.4; mining the
auxiliary output as well (``aux_ohem=True``) is an option, not the default.

Category-consistent loss (CCNet, TPAMI 2020, Sec. 3.4). The RCCA output is projected by a 1×1
conv to 16 dims; within each sample, with ``μ_c`` the mean embedding of class c (over the
pixels — or voxels, for clips — labelled c) and C the classes present::

    l_var = 1/|C| Σ_c 1/N_c Σ_i φ_var(‖μ_c − h_i‖)
    φ_var(d) = 0                      d <= δv
             = (d − δv)²              δv < d <= δd
             = d − δd + (δd − δv)²    d > δd          (linear: far outliers do not dominate)
    l_dis = 1/(|C|(|C|−1)) Σ_{a≠b} φ_dis(‖μ_a − μ_b‖),  φ_dis(d) = max(2δd − d, 0)²
    l_reg = 1/|C| Σ_c ‖μ_c‖
    total = l_seg + α·l_var + β·l_dis + γ·l_reg   (δv=0.5, δd=1.5, α=β=1, γ=0.001)

The projection belongs to the loss, not to the model: it exists only to shape the features
during training, so checkpoints for inference stay free of it (the training state keeps it).
The terms are averaged over the samples of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccnet.model import resize_logits
from ccnet.training.datasets.index import IGNORE_INDEX

__all__ = [
    "CategoryConsistentLoss",
    "OhemCrossEntropy",
    "SegmentationLoss",
    "category_consistent_terms",
    "class_means",
    "distance_term",
    "regularization_term",
    "variance_term",
]


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only (online hard example mining).

    As in the official CCNet recipe: a valid pixel is kept when the predicted probability of
    its true class is at most ``threshold``; if that keeps fewer than ``min_kept`` pixels, the
    threshold rises to the ``min_kept``-th smallest probability, so at least ``min_kept``
    pixels (or all valid ones) always contribute.

    Args:
        threshold: probability below which a pixel counts as hard (0.7).
        min_kept: the least number of pixels kept per batch (100 000 in the official recipe
            for 769×769 crops; scale it with your crop).
        ignore_index: target value that is never kept.
    """

    def __init__(
        self, threshold: float = 0.7, min_kept: int = 100_000, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__()
        if not 0 < threshold <= 1 or min_kept < 0:
            raise ValueError(
                f"need 0 < threshold <= 1 and min_kept >= 0, got {threshold}, {min_kept}"
            )
        self.threshold = threshold
        self.min_kept = min_kept
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        pixel_loss = F.cross_entropy(
            logits, target, ignore_index=self.ignore_index, reduction="none"
        )
        valid = target != self.ignore_index
        num_valid = int(valid.sum())
        if num_valid == 0:
            return logits.sum() * 0.0  # keeps the graph (DDP) and returns an exact zero
        with torch.no_grad():
            # probability of the true class = exp(-CE); exact, and avoids a second softmax
            prob = torch.exp(-pixel_loss[valid])
            threshold = self.threshold
            if self.min_kept > 0:
                k = min(num_valid, self.min_kept)
                kth = torch.kthvalue(prob, k).values.item()
                threshold = max(threshold, kth)
            kept = torch.zeros_like(valid)
            kept[valid] = prob <= threshold
        return pixel_loss[kept].sum() / kept.sum().clamp(min=1)


def _ce(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)


class SegmentationLoss(nn.Module):
    """Main loss on ``out`` plus ``aux_weight`` × the auxiliary loss on ``aux`` (if present).

    Args:
        criterion: ``"ce"`` (cross-entropy) or ``"ohem"`` for the main output.
        aux_weight: weight of the auxiliary head's loss (0.4, as in CCNet and PSPNet).
        ohem_threshold: see ``OhemCrossEntropy``.
        ohem_min_kept: see ``OhemCrossEntropy``.
        aux_ohem: with ``"ohem"``, mine the auxiliary output too; by default it gets plain
            cross-entropy, as in the official criterion.
    """

    def __init__(
        self,
        criterion: str = "ce",
        *,
        aux_weight: float = 0.4,
        ohem_threshold: float = 0.7,
        ohem_min_kept: int = 100_000,
        aux_ohem: bool = False,
    ) -> None:
        super().__init__()
        if criterion not in ("ce", "ohem"):
            raise ValueError(f"criterion must be 'ce' or 'ohem', got {criterion!r}")
        self.criterion = (
            OhemCrossEntropy(ohem_threshold, ohem_min_kept) if criterion == "ohem" else None
        )
        self.aux_weight = aux_weight
        self.aux_ohem = aux_ohem

    def forward(
        self, outputs: dict[str, Tensor], target: Tensor, *, align_corners: bool = False
    ) -> dict[str, Tensor]:
        """``{"main", "aux" (if present), "seg" = main + aux_weight·aux}``.

        Args:
            outputs: ``{"out", "aux"?}`` logits, at the target's size or coarser.
            target: class ids (255 = ignore).
            align_corners: the model's grid, for logits that need upsampling to the target.
        """
        size = target.shape[-2:]
        main = resize_logits(outputs["out"], size, align_corners)
        terms = {"main": self._loss(main, target, mine=True)}
        seg = terms["main"]
        if "aux" in outputs and self.aux_weight > 0:
            aux = resize_logits(outputs["aux"], size, align_corners)
            terms["aux"] = self._loss(aux, target, mine=self.aux_ohem)
            seg = seg + self.aux_weight * terms["aux"]
        terms["seg"] = seg
        return terms

    def _loss(self, logits: Tensor, target: Tensor, *, mine: bool) -> Tensor:
        if mine and self.criterion is not None:
            return self.criterion(logits, target)
        return _ce(logits, target)


# --------------------------------------------------------------------------- category consistent


def class_means(embeddings: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Mean embedding of every class present.

    Args:
        embeddings: (P, D) one row per pixel.
        labels: (P,) class ids in 0..num_classes-1 (ignored pixels already removed).
        num_classes: K.

    Returns:
        ``(present, means)``: the class ids present (C,) and their means (C, D).
    """
    one_hot = F.one_hot(labels, num_classes).to(embeddings.dtype)  # (P, K)
    counts = one_hot.sum(dim=0)
    present = torch.nonzero(counts > 0).flatten()
    sums = one_hot.t() @ embeddings  # (K, D)
    return present, sums[present] / counts[present, None]


def variance_term(
    embeddings: Tensor,
    labels: Tensor,
    present: Tensor,
    means: Tensor,
    delta_v: float,
    delta_d: float,
) -> Tensor:
    """l_var: per class, the mean φ_var of its pixels' distances to the class mean; then the
    mean over classes (see the module docstring)."""
    slot = torch.full((int(present.max()) + 1,), -1, dtype=torch.long, device=labels.device)
    slot[present] = torch.arange(present.numel(), device=labels.device)
    rows = slot[labels]  # each pixel's row in ``means``
    distance = (embeddings - means[rows]).norm(dim=1)
    quadratic = (distance - delta_v).clamp(min=0) ** 2
    linear = distance - delta_d + (delta_d - delta_v) ** 2
    phi = torch.where(distance > delta_d, linear, quadratic)
    per_class = torch.zeros(present.numel(), dtype=phi.dtype, device=phi.device)
    per_class.index_add_(0, rows, phi)
    counts = torch.bincount(rows, minlength=present.numel()).to(phi.dtype)
    return (per_class / counts).mean()


def distance_term(means: Tensor, delta_d: float) -> Tensor:
    """l_dis: mean over ordered pairs of distinct classes of ``max(2δd − ‖μa − μb‖, 0)²``
    (0 with fewer than two classes)."""
    count = means.shape[0]
    if count < 2:
        return means.sum() * 0.0
    diff = means[:, None, :] - means[None, :, :]
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=means.device)
    # norm of exact zeros has no gradient: take it off the diagonal only
    distance = diff[off_diagonal].norm(dim=1)
    return ((2 * delta_d - distance).clamp(min=0) ** 2).mean()


def regularization_term(means: Tensor) -> Tensor:
    """l_reg: mean norm of the class means (keeps the embedding near the origin)."""
    return means.norm(dim=1).mean()


def category_consistent_terms(
    embeddings: Tensor, labels: Tensor, num_classes: int, delta_v: float, delta_d: float
) -> dict[str, Tensor] | None:
    """``{"var", "dis", "reg"}`` for one sample's pixels (P, D) / labels (P,); ignore pixels
    (255) are dropped first. None if no pixel is labelled."""
    keep = labels != IGNORE_INDEX
    embeddings, labels = embeddings[keep], labels[keep]
    if labels.numel() == 0:
        return None
    present, means = class_means(embeddings, labels, num_classes)
    return {
        "var": variance_term(embeddings, labels, present, means, delta_v, delta_d),
        "dis": distance_term(means, delta_d),
        "reg": regularization_term(means),
    }


class CategoryConsistentLoss(nn.Module):
    """α·l_var + β·l_dis + γ·l_reg on a 1×1 projection of the RCCA output (module docstring).

    Args:
        in_channels: channels of the RCCA output (the head's ``inter_channels``).
        num_classes: K.
        embed_dim: projection size (16 in the paper).
        delta_v: variance margin δv.
        delta_d: distance margin δd.
        alpha: weight of l_var.
        beta: weight of l_dis.
        gamma: weight of l_reg.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        embed_dim: int = 16,
        delta_v: float = 0.5,
        delta_d: float = 1.5,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.001,
    ) -> None:
        super().__init__()
        if not 0 <= delta_v < delta_d:
            raise ValueError(f"need 0 <= delta_v < delta_d, got {delta_v}, {delta_d}")
        self.projection = nn.Conv2d(in_channels, embed_dim, 1)
        self.num_classes = num_classes
        self.delta_v, self.delta_d = delta_v, delta_d
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    def forward(self, context: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"var", "dis", "reg", "cc" (the weighted sum)}`` for a batch.

        Args:
            context: RCCA output (B, C, h, w) or, for clips, (B, C, T, h, w).
            target: labels at input resolution (B, H, W) or (B, T, H, W); resized to the
                feature grid with nearest neighbour.
        """
        if context.dim() == 5:  # per frame 1×1 conv; a clip's voxels form one sample
            batch, _, frames = context.shape[:3]
            flat = self.projection(context.transpose(1, 2).flatten(0, 1).float())
            embedded = flat.unflatten(0, (batch, frames)).transpose(1, 2)  # (B, D, T, h, w)
            labels = F.interpolate(target[:, None].float(), size=embedded.shape[2:], mode="nearest")
        else:
            embedded = self.projection(context.float())  # (B, D, h, w)
            labels = F.interpolate(target[:, None].float(), size=embedded.shape[2:], mode="nearest")
        labels = labels[:, 0].long()
        sums = {"var": [], "dis": [], "reg": []}
        for sample in range(embedded.shape[0]):
            pixels = embedded[sample].flatten(1).t()  # (P, D)
            terms = category_consistent_terms(
                pixels, labels[sample].flatten(), self.num_classes, self.delta_v, self.delta_d
            )
            if terms is not None:
                for name in sums:
                    sums[name].append(terms[name])
        zero = embedded.sum() * 0.0
        result = {
            name: torch.stack(values).mean() if values else zero for name, values in sums.items()
        }
        result["cc"] = (
            self.alpha * result["var"] + self.beta * result["dis"] + self.gamma * result["reg"]
        )
        return result
