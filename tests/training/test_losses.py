"""Loss terms against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ccnet.training.losses import (
    CategoryConsistentLoss,
    OhemCrossEntropy,
    SegmentationLoss,
    category_consistent_terms,
    class_means,
    distance_term,
    regularization_term,
    variance_term,
)

# Three classes in 2-D: class 0 at (0,0), (2,0) -> mean (1,0), both at distance 1 (quadratic
# zone: (1 − 0.5)² = 0.25); class 1 at (0,5), (0,9) -> mean (0,7), distance 2 (linear zone:
# 2 − 1.5 + (1.5 − 0.5)² = 1.5); class 2 a single pixel -> 0. l_var = (0.25 + 1.5 + 0) / 3.
EMBEDDINGS = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 5.0], [0.0, 9.0], [10.0, 10.0]])
LABELS = torch.tensor([0, 0, 1, 1, 2])


def test_class_means() -> None:
    present, means = class_means(EMBEDDINGS, LABELS, num_classes=4)
    assert present.tolist() == [0, 1, 2]
    assert means.tolist() == [[1.0, 0.0], [0.0, 7.0], [10.0, 10.0]]


def test_variance_term_by_hand() -> None:
    present, means = class_means(EMBEDDINGS, LABELS, 3)
    value = variance_term(EMBEDDINGS, LABELS, present, means, delta_v=0.5, delta_d=1.5)
    assert value.item() == pytest.approx((0.25 + 1.5 + 0.0) / 3)


def test_variance_term_zero_inside_the_margin() -> None:
    points = torch.tensor([[0.0, 0.0], [0.8, 0.0]])  # distance 0.4 to the mean, below δv
    labels = torch.tensor([0, 0])
    present, means = class_means(points, labels, 1)
    assert variance_term(points, labels, present, means, 0.5, 1.5).item() == 0.0


def test_variance_term_is_continuous_at_delta_d() -> None:
    # φ_var just below and just above δd agree ((δd − δv)² = 1)
    for d in (1.5 - 1e-6, 1.5 + 1e-6):
        points = torch.tensor([[-d, 0.0], [d, 0.0]])
        labels = torch.tensor([0, 0])
        present, means = class_means(points, labels, 1)
        value = variance_term(points, labels, present, means, 0.5, 1.5).item()
        assert value == pytest.approx(1.0, abs=1e-5)


def test_distance_term_by_hand() -> None:
    # means 1 apart -> (2·1.5 − 1)² = 4 per ordered pair (2 pairs); the others are > 3 apart
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 4.0]])
    assert distance_term(means, delta_d=1.5).item() == pytest.approx(2 * 4.0 / 6)
    assert distance_term(means[:1], 1.5).item() == 0.0


def test_regularization_term_by_hand() -> None:
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 4.0]])
    assert regularization_term(means).item() == pytest.approx(5.0 / 3)


def test_terms_drop_ignored_pixels() -> None:
    labels = torch.cat([LABELS, torch.tensor([255])])
    embeddings = torch.cat([EMBEDDINGS, torch.tensor([[100.0, 100.0]])])
    terms = category_consistent_terms(embeddings, labels, 3, 0.5, 1.5)
    assert terms is not None
    assert terms["var"].item() == pytest.approx((0.25 + 1.5) / 3)
    assert category_consistent_terms(embeddings[:1], torch.tensor([255]), 3, 0.5, 1.5) is None


def _identity_projection(loss: CategoryConsistentLoss) -> None:
    with torch.no_grad():
        loss.projection.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        loss.projection.bias.zero_()


def test_category_consistent_module_weights_the_terms() -> None:
    loss = CategoryConsistentLoss(2, 3, embed_dim=2, alpha=1.0, beta=2.0, gamma=0.5)
    _identity_projection(loss)
    context = EMBEDDINGS.t().reshape(1, 2, 1, 5)  # five pixels in a row
    target = LABELS.view(1, 1, 5)
    result = loss(context, target)
    _, means = class_means(EMBEDDINGS, LABELS, 3)
    expected_var = (0.25 + 1.5) / 3
    expected_dis = distance_term(means, 1.5).item()
    expected_reg = regularization_term(means).item()
    assert result["var"].item() == pytest.approx(expected_var)
    assert result["cc"].item() == pytest.approx(
        expected_var + 2.0 * expected_dis + 0.5 * expected_reg
    )
    result["cc"].backward()
    assert loss.projection.weight.grad is not None


def test_category_consistent_module_on_clips_resizes_labels() -> None:
    loss = CategoryConsistentLoss(2, 3, embed_dim=2)
    _identity_projection(loss)
    # (B=1, C=2, T=2, h=1, w=5); labels at 2× resolution reduce to the same ids
    context = torch.stack([EMBEDDINGS.t().reshape(2, 1, 5)] * 2, dim=1)[None]
    target = LABELS.repeat_interleave(2).view(1, 1, 10).expand(2, 2, 10)[None]
    result = loss(context, target)
    assert result["var"].item() == pytest.approx((0.25 + 1.5) / 3)


def _two_class_logits(p_true: list[float]) -> torch.Tensor:
    """Logits (1, 2, 1, N) whose softmax gives class 0 the probabilities ``p_true``."""
    p = torch.tensor(p_true)
    return torch.stack([p.log(), (1 - p).log()]).view(1, 2, 1, -1)


def test_ohem_keeps_pixels_below_the_threshold() -> None:
    logits = _two_class_logits([0.9, 0.6, 0.3, 0.95, 0.5])
    target = torch.tensor([[[0, 0, 0, 0, 255]]])
    loss = OhemCrossEntropy(threshold=0.7, min_kept=0)(logits, target)
    assert loss.item() == pytest.approx((-math.log(0.6) - math.log(0.3)) / 2, rel=1e-5)


def test_ohem_raises_the_threshold_to_keep_min_kept() -> None:
    logits = _two_class_logits([0.9, 0.6, 0.3, 0.95, 0.5])
    target = torch.tensor([[[0, 0, 0, 0, 255]]])
    loss = OhemCrossEntropy(threshold=0.7, min_kept=3)(logits, target)
    expected = -(math.log(0.6) + math.log(0.3) + math.log(0.9)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    everything = OhemCrossEntropy(threshold=0.7, min_kept=100)(logits, target)
    expected_all = -(math.log(0.9) + math.log(0.6) + math.log(0.3) + math.log(0.95)) / 4
    assert everything.item() == pytest.approx(expected_all, rel=1e-5)


def test_ohem_with_only_ignored_pixels_is_zero_and_differentiable() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = OhemCrossEntropy()(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None


def test_segmentation_loss_weights_the_auxiliary_head() -> None:
    torch.manual_seed(0)
    out, aux = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, 0] = 255
    terms = SegmentationLoss("ce", aux_weight=0.4)({"out": out, "aux": aux}, target)
    main = F.cross_entropy(out, target, ignore_index=255)
    auxiliary = F.cross_entropy(aux, target, ignore_index=255)
    assert terms["main"].item() == pytest.approx(main.item())
    assert terms["seg"].item() == pytest.approx((main + 0.4 * auxiliary).item())
    only_main = SegmentationLoss("ce")({"out": out}, target)
    assert set(only_main) == {"main", "seg"}


def test_segmentation_loss_accepts_clips() -> None:
    logits = torch.randn(1, 3, 2, 4, 4)  # (B, K, T, H, W)
    target = torch.randint(0, 3, (1, 2, 4, 4))
    terms = SegmentationLoss("ohem", ohem_min_kept=5)({"out": logits}, target)
    assert torch.isfinite(terms["seg"])


def _ohem_by_hand(logits: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean CE over valid pixels whose true-class probability is <= threshold (min_kept 0)."""
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    valid = target != 255
    hard = valid & (torch.exp(-ce) <= threshold)
    return ce[hard].sum() / hard.sum()


def test_ohem_mines_the_main_output_only_as_the_official_criterion() -> None:
    torch.manual_seed(1)
    out, aux = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    target = torch.randint(0, 4, (2, 6, 7))
    target[1, 2] = 255
    loss = SegmentationLoss("ohem", ohem_threshold=0.3, ohem_min_kept=0)
    terms = loss({"out": out, "aux": aux}, target)
    main = _ohem_by_hand(out, target, 0.3)
    plain_aux = F.cross_entropy(aux, target, ignore_index=255)
    assert terms["main"].item() == pytest.approx(main.item(), rel=1e-6)
    assert terms["aux"].item() == pytest.approx(plain_aux.item(), rel=1e-6)
    assert terms["seg"].item() == pytest.approx((main + 0.4 * plain_aux).item(), rel=1e-6)
    # mining both is the option
    both = SegmentationLoss("ohem", ohem_threshold=0.3, ohem_min_kept=0, aux_ohem=True)
    mined_aux = _ohem_by_hand(aux, target, 0.3)
    assert mined_aux.item() != pytest.approx(plain_aux.item(), rel=1e-3)
    terms = both({"out": out, "aux": aux}, target)
    assert terms["aux"].item() == pytest.approx(mined_aux.item(), rel=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_coarse_logits_are_upsampled_on_the_model_grid(align_corners: bool) -> None:
    """1/8 logits (as the peers' networks return) are resized before the loss, with the model's
    align_corners; the two grids give different losses, so the flag is honoured."""
    torch.manual_seed(2)
    coarse, aux = torch.randn(2, 5, 4, 6), torch.randn(2, 5, 4, 6)
    target = torch.randint(0, 5, (2, 29, 45))
    terms = SegmentationLoss("ce")({"out": coarse, "aux": aux}, target, align_corners=align_corners)

    def up(x: torch.Tensor, corners: bool) -> torch.Tensor:
        return F.interpolate(x, size=(29, 45), mode="bilinear", align_corners=corners)

    expected = F.cross_entropy(up(coarse, align_corners), target)
    other = F.cross_entropy(up(coarse, not align_corners), target)
    assert terms["main"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["main"].item() != pytest.approx(other.item(), rel=1e-4)
    auxiliary = F.cross_entropy(up(aux, align_corners), target)
    assert terms["aux"].item() == pytest.approx(auxiliary.item(), rel=1e-6)
