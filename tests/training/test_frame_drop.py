"""Frame-drop augmentation: dropped frames hold no information, masks stay, one frame is kept."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ccnet.training.frame_drop import DROP_KINDS, FrameDrop, uninformative_frame


def _identity(images: Tensor, masks: Tensor, generator: torch.Generator | None):
    return images, masks


def _clip(frames: int = 6) -> tuple[Tensor, Tensor]:
    images = torch.randint(
        0, 256, (frames, 3, 16, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    masks = torch.randint(0, 4, (frames, 16, 20), generator=torch.Generator().manual_seed(2))
    return images, masks


def test_flat_keeps_the_mean_colour_and_drops_the_structure() -> None:
    frame = _clip()[0][0]
    flat = uninformative_frame(frame, "flat", torch.Generator().manual_seed(0))
    assert flat.dtype == torch.uint8 and flat.shape == frame.shape
    mean = frame.float().mean(dim=(1, 2))
    assert torch.allclose(flat.float().mean(dim=(1, 2)), mean, atol=1.0)
    assert float(flat.float().std(dim=(1, 2)).max()) < 6  # faint noise only


def test_scramble_keeps_the_pixels_not_their_places() -> None:
    frame = _clip()[0][0]
    scrambled = uninformative_frame(frame, "scramble", torch.Generator().manual_seed(0))
    for c in range(3):  # the same multiset of values per channel
        assert torch.equal(scrambled[c].flatten().sort().values, frame[c].flatten().sort().values)
    assert not torch.equal(scrambled, frame)
    assert set(DROP_KINDS) == {"flat", "scramble"}
    with pytest.raises(ValueError, match="unknown frame-drop kind"):
        uninformative_frame(frame, "blur", torch.Generator())


def test_drop_replaces_frames_keeps_masks_and_is_seeded() -> None:
    images, masks = _clip()
    drop = FrameDrop(_identity, 0.5)
    out, out_masks = drop(images, masks, torch.Generator().manual_seed(3))
    again, _ = drop(images, masks, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)  # a function of the sample's seed
    assert torch.equal(out_masks, masks)  # the truth is the true scene
    changed = [t for t in range(images.shape[0]) if not torch.equal(out[t], images[t])]
    assert 0 < len(changed) < images.shape[0]
    assert torch.equal(images, _clip()[0])  # the input is not modified in place


def test_every_window_keeps_a_frame_and_images_pass_through() -> None:
    images, masks = _clip(3)
    drop = FrameDrop(_identity, 0.99)
    for seed in range(20):
        out, _ = drop(images, masks, torch.Generator().manual_seed(seed))
        kept = [t for t in range(3) if torch.equal(out[t], images[t])]
        assert len(kept) >= 1, f"seed {seed}: every frame dropped"
    single, _ = drop(images[:1], masks[:1], torch.Generator().manual_seed(0))
    assert torch.equal(single, images[:1])
    with pytest.raises(ValueError, match="probability"):
        FrameDrop(_identity, 1.0)
