"""The offline segmentation pipeline: sizes, resize policy, class statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import build_model
from model.checkpoint import complete_meta
from service.pipeline import ImageSegmenter


@pytest.fixture(scope="module")
def segmenter_parts():
    torch.manual_seed(0)
    model = build_model("ccnet-tiny", num_classes=4)
    return model, complete_meta(model)


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (300, 90)], ids=str)
def test_mask_has_input_size(segmenter_parts, size: tuple[int, int]) -> None:
    model, meta = segmenter_parts
    segmenter = ImageSegmenter(model, meta, max_side=128)
    rgb = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    result = segmenter.segment(rgb)
    assert result.mask.shape == size
    assert result.mask.dtype == np.uint8
    assert result.mask.max() < 4
    assert sum(result.class_fractions().values()) == pytest.approx(1.0)


def test_downscaled_inference_matches_direct_on_a_resized_image(segmenter_parts) -> None:
    """Above max_side the network sees the image at reduced size; the mask is scaled back."""
    model, meta = segmenter_parts
    rgb = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    small = ImageSegmenter(model, meta, max_side=48).segment(rgb)
    assert small.mask.shape == (64, 96)
    # nearest-neighbour upsampling by 2: every 2x2 block holds one class
    blocks = small.mask.reshape(32, 2, 48, 2)
    assert (blocks == blocks[:, :1, :, :1]).all()


def test_rejects_wrong_array(segmenter_parts) -> None:
    model, meta = segmenter_parts
    segmenter = ImageSegmenter(model, meta)
    with pytest.raises(ValueError, match="uint8"):
        segmenter.segment(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="max_side"):
        ImageSegmenter(model, meta, max_side=0)
