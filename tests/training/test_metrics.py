"""mIoU, per-class IoU and pixel accuracy on a known confusion matrix."""

from __future__ import annotations

import math

import pytest
import torch

from ccnet.training.metrics import ConfusionMatrix


def _from_pairs(pairs: list[tuple[int, int, int]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(truth, prediction, count) triples -> flat target / prediction tensors."""
    target, prediction = [], []
    for truth, predicted, count in pairs:
        target += [truth] * count
        prediction += [predicted] * count
    return torch.tensor(prediction), torch.tensor(target)


def test_known_confusion_matrix() -> None:
    # rows = truth, columns = prediction
    #        0  1  2  3
    # 0:   [50, 10, 0, 0]
    # 1:   [ 5, 30, 5, 0]
    # 2:   [ 0,  0, 0, 0]   class 2 never in truth but predicted 5 times -> IoU 0
    # 3:   [ 0,  0, 0, 0]   class 3 absent everywhere -> no IoU, not averaged
    prediction, target = _from_pairs([(0, 0, 50), (0, 1, 10), (1, 0, 5), (1, 1, 30), (1, 2, 5)], 4)
    matrix = ConfusionMatrix(4)
    matrix.update(prediction[:40], target[:40])  # in two parts: accumulation
    matrix.update(prediction[40:], target[40:])
    expected = torch.tensor([[50, 10, 0, 0], [5, 30, 5, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(matrix.matrix, expected)
    iou = matrix.iou()
    assert iou[0].item() == pytest.approx(50 / (60 + 55 - 50))
    assert iou[1].item() == pytest.approx(30 / (40 + 40 - 30))
    assert iou[2].item() == 0.0
    assert math.isnan(iou[3].item())
    assert matrix.mean_iou() == pytest.approx((50 / 65 + 30 / 50 + 0.0) / 3)
    assert matrix.pixel_accuracy() == pytest.approx(80 / 100)
    summary = matrix.summary(["a", "b", "c", "d"])
    assert summary["per_class_iou"]["d"] is None
    assert summary["pixels"] == 100
    assert summary["mIoU"] == pytest.approx((50 / 65 + 0.6) / 3, abs=1e-6)


def test_ignore_pixels_are_not_counted() -> None:
    matrix = ConfusionMatrix(2)
    matrix.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 255, 1]]))
    assert matrix.matrix.sum().item() == 2
    assert matrix.mean_iou() == 1.0


def test_out_of_range_targets_are_refused() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        ConfusionMatrix(2).update(torch.tensor([0]), torch.tensor([2]))


def test_merge_adds_matrices() -> None:
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    b.update(torch.tensor([1]), torch.tensor([1]))
    a.merge(b)
    assert a.matrix.tolist() == [[1, 1], [0, 1]]
