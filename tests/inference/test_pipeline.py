"""The segmentation pipeline: resize/pad policy, mapping back, class statistics, clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ccnet.inference.backends.loading import info_from_meta
from ccnet.inference.backends.torch_backend import TorchBackend
from ccnet.inference.pipeline import (
    STRIDE,
    class_statistics,
    labels_from_logits,
    prepare_clip,
    prepare_image,
)
from ccnet.inference.segmenter import ClipSegmenter, Segmenter
from ccnet.model import build_model
from ccnet.model.checkpoint import complete_meta


def _backend(name: str, num_classes: int = 4) -> TorchBackend:
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes)
    meta = complete_meta(model)
    return TorchBackend(info_from_meta(None, meta, Path(name)), model, meta, device="cpu")


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return _backend("ccnet-tiny")


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (300, 90)], ids=str)
def test_mask_has_input_size(backend, size: tuple[int, int]) -> None:
    segmenter = Segmenter(backend, max_side=128)
    rgb = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    result = segmenter(rgb)
    assert result.mask.shape == size
    assert result.mask.dtype == np.uint8
    assert result.mask.max() < 4
    assert sum(result.class_fractions().values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("size", "max_side", "scaled"),
    [((37, 53), 128, (37, 53)), ((300, 90), 128, (128, 38)), ((8, 16), 16, (8, 16))],
    ids=str,
)
def test_prepare_scales_long_side_and_pads_to_stride(size, max_side, scaled) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (*size, 3), dtype=np.uint8)
    prepared = prepare_image(rgb, max_side)
    assert prepared.size == size and prepared.scaled == scaled
    channels, height, width = prepared.pixels.shape
    assert channels == 3 and height % STRIDE == 0 and width % STRIDE == 0
    assert height - scaled[0] < STRIDE and width - scaled[1] < STRIDE
    assert prepared.pixels.dtype == np.float32
    if scaled == size:  # unscaled content is carried over exactly, channel-first
        np.testing.assert_array_equal(
            prepared.pixels[:, : size[0], : size[1]], rgb.transpose(2, 0, 1)
        )
        # padding replicates the last row/column
        np.testing.assert_array_equal(prepared.pixels[:, -1, : size[1]], rgb[-1].T)


def test_labels_ignore_padding_and_resize_back() -> None:
    logits = np.zeros((3, 16, 24), dtype=np.float32)
    logits[1, :10, :20] = 5.0  # the real 10x20 region says class 1
    logits[2, 10:, :] = 9.0  # padding says class 2: must not leak in
    labels = labels_from_logits(logits, scaled=(10, 20), size=(20, 40))
    assert labels.shape == (20, 40)
    assert (labels == 1).all()


def test_downscaled_inference_maps_back_with_nearest(backend) -> None:
    """Above max_side the network sees the image at reduced size; the mask is scaled back."""
    rgb = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    small = Segmenter(backend, max_side=48)(rgb)
    assert small.mask.shape == (64, 96)
    # nearest-neighbour upsampling by 2: every 2x2 block holds one class
    blocks = small.mask.reshape(32, 2, 48, 2)
    assert (blocks == blocks[:, :1, :, :1]).all()


def test_class_statistics_counts_and_fractions() -> None:
    mask = np.array([[0, 0, 2], [2, 2, 2]], dtype=np.uint8)
    stats = class_statistics(mask, ["a", "b", "c"])
    assert [(s["id"], s["name"], s["pixels"]) for s in stats] == [(0, "a", 2), (2, "c", 4)]
    assert sum(s["fraction"] for s in stats) == pytest.approx(1.0)


def test_rejects_wrong_array(backend) -> None:
    segmenter = Segmenter(backend)
    with pytest.raises(ValueError, match="uint8"):
        segmenter(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="max_side"):
        Segmenter(backend, max_side=0)
    with pytest.raises(ValueError, match="frames"):
        prepare_clip(np.zeros((4, 4, 3), dtype=np.uint8), 64)


def test_clip_windows_cover_every_frame_and_match_one_window() -> None:
    """A clip no longer than the window is one forward pass; a longer one is stitched from
    overlapping windows and still gets a mask per frame at the input's size."""
    video = _backend("ccnet3d-tiny", num_classes=3)
    frames = np.random.default_rng(3).integers(0, 256, (4, 20, 28, 3), dtype=np.uint8)
    single = ClipSegmenter(video, max_side=64).segment(frames)
    assert single.masks.shape == (4, 20, 28) and single.window == 4
    direct = video.infer(prepare_clip(frames, 64).pixels[None])[0]
    np.testing.assert_array_equal(single.masks, direct[:, :, :20, :28].argmax(0))

    longer = np.concatenate([frames, frames[::-1], frames[:3]])  # 11 frames
    result = ClipSegmenter(video, max_side=64, overlap=2).segment(longer)
    assert result.masks.shape == (11, 20, 28) and result.overlap == 2
