"""Validation pictures: the input is recovered exactly, masks are drawn in the class colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccnet.model.zoo import IMAGENET_NORMALIZATION, OFFICIAL_NORMALIZATION
from ccnet.training.evaluate import Prediction
from ccnet.training.overlays import colour_labels, denormalize, overlay_strip

PALETTE = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


@pytest.mark.parametrize("normalization", [IMAGENET_NORMALIZATION, OFFICIAL_NORMALIZATION])
def test_denormalize_inverts_the_models_normalisation(normalization) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = normalization.normalize(torch.from_numpy(rgb).permute(2, 0, 1))
    assert np.array_equal(denormalize(x, normalization), rgb)


def test_strip_shows_input_truth_and_prediction_in_class_colours() -> None:
    rgb = np.full((4, 6, 3), 100, np.uint8)
    image = IMAGENET_NORMALIZATION.normalize(torch.from_numpy(rgb).permute(2, 0, 1))[None]
    truth = torch.tensor([[0, 0, 1, 1, 255, 255]] * 4)
    labels = torch.tensor([[2, 2, 2, 1, 1, 1]] * 4)
    strip = overlay_strip(
        Prediction((0,), labels[None], truth[None], image), IMAGENET_NORMALIZATION, PALETTE
    )
    assert strip.shape == (4, 3 * 6 + 8, 3)
    assert np.array_equal(strip[:, :6], rgb)  # the input as it was
    truth_panel, predicted_panel = strip[:, 10:16], strip[:, 20:26]
    assert np.array_equal(truth_panel[:, 4:], rgb[:, 4:])  # ignore: the image, uncoloured
    red, green, blue = (truth_panel[0, 0], truth_panel[0, 2], predicted_panel[0, 0])
    assert red[0] > red[1] and green[1] > green[0] and blue[2] > blue[0]
    assert np.array_equal(colour_labels(np.array([[255]]), PALETTE), [[[0, 0, 0]]])


def test_strip_of_a_clip_window_shows_its_first_scored_frame() -> None:
    frames = torch.stack([torch.full((3, 2, 2), float(t)) for t in range(4)], dim=1)[None]
    labels = torch.zeros(1, 2, 2, dtype=torch.long)  # the moved-back window scores 1 frame
    strip = overlay_strip(Prediction((9,), labels, labels, frames), IMAGENET_NORMALIZATION, PALETTE)
    expected = denormalize(frames[0, :, 3], IMAGENET_NORMALIZATION)  # its last frame
    assert np.array_equal(strip[:, :2], expected)
