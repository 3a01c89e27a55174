"""Augmentation: reproducible from the seed, one geometry for all frames, ignore padding."""

from __future__ import annotations

import pytest
import torch

from ccnet.model.zoo import IMAGENET_NORMALIZATION, Normalization
from ccnet.training.transforms import EvalTransform, TrainTransform


def _clip(frames: int = 3, size: tuple[int, int] = (20, 30)) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames that are identical up to a per-frame brightness offset, and a coordinate mask."""
    base = torch.arange(size[0] * size[1]).view(1, 1, *size) % 200
    images = torch.cat([(base + 10 * t).expand(1, 3, *size) for t in range(frames)]).to(torch.uint8)
    mask = (torch.arange(size[1]) % 5).expand(frames, *size).to(torch.uint8).clone()
    return images, mask


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_result() -> None:
    transform = TrainTransform(IMAGENET_NORMALIZATION, (16, 16), (0.5, 2.0), True, 0.3)
    images, masks = _clip()
    a = transform(images, masks, _gen(7))
    b = transform(images, masks, _gen(7))
    c = transform(images, masks, _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_every_frame_gets_the_same_geometry() -> None:
    # no photometric jitter: normalised frames differ only by the constant offset 10·t
    norm = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    transform = TrainTransform(norm, (16, 16), (0.8, 1.6), True, 0.0)
    images, masks = _clip()
    for seed in range(5):
        x, y = transform(images, masks, _gen(seed))
        assert x.shape == (3, 3, 16, 16) and y.shape == (3, 16, 16)
        for t in range(1, 3):
            assert torch.equal(y[t], y[0])
            valid = y[0] != 255
            diff = (x[t] - x[0])[:, valid]
            assert torch.allclose(diff, torch.full_like(diff, 10.0 * t), atol=1e-3)


def test_small_images_are_padded_with_ignore() -> None:
    transform = TrainTransform(IMAGENET_NORMALIZATION, (40, 50), (1.0, 1.0), False, 0.0)
    images, masks = _clip(1, (20, 30))
    x, y = transform(images, masks, _gen(0))
    assert x.shape == (1, 3, 40, 50)
    assert (y == 255).sum() == 40 * 50 - 20 * 30
    assert (x[..., 20:, :] == 0).all()  # padding is the mean: 0 after normalisation
    assert y.dtype == torch.int64


def test_eval_transform_only_normalises() -> None:
    images, masks = _clip(1)
    x, y = EvalTransform(IMAGENET_NORMALIZATION)(images, masks)
    assert torch.allclose(x, IMAGENET_NORMALIZATION.normalize(images))
    assert torch.equal(y, masks.long())


def test_train_transform_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="generator"):
        TrainTransform(IMAGENET_NORMALIZATION, (8, 8))(*_clip(1), None)
