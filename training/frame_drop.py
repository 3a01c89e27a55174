"""Frame-drop augmentation for CCNet3D: some frames of a training window carry no information.

Why. A clip model learns to use time only where one frame does not hold the answer. The
corrupted frames of a data set do that for the corruptions it contains, but a network can also
learn each corruption *per frame* (denoise, see through an occluder) and leave its temporal
attention idle; it then fails on a corruption it never saw. Replacing whole frames by ones that
hold no information about the scene, while their masks stay the true scene, leaves exactly one
way to label them: read the neighbouring frames. That is a generic skill — it does not depend
on what destroyed the frame — so it carries over to corruptions that were never trained on.

The replacements hold no spatial information and look like none of the synthetic corruption
kinds (no low-pass filter, no boxes, no added noise on a visible scene), so holding a kind out
of the data stays a fair test:

* ``flat``: the frame's mean colour with faint sensor noise (a dropped or black frame);
* ``scramble``: the frame's own pixels in a random order (colours kept, structure gone).

Random draws come from the sample's generator, before the wrapped transform's, so a sample's
augmentation stays a function of its seed alone (exact resume).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ccnet.training.datasets.dataset import Transform

__all__ = ["DROP_KINDS", "FrameDrop", "uninformative_frame"]

DROP_KINDS: tuple[str, ...] = ("flat", "scramble")
_FLAT_NOISE = 4.0  # grey levels: faint, so "flat" stays distinct from the data's heavy noise


def uninformative_frame(frame: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """A uint8 frame ``(3, H, W)`` with no spatial information left (see the module docstring).

    Args:
        frame: the original frame; supplies the colours.
        kind: one of ``DROP_KINDS``.
        generator: the sample's random source.
    """
    channels, height, width = frame.shape
    if kind == "flat":
        mean = frame.float().mean(dim=(1, 2), keepdim=True)
        noise = torch.randn((1, height, width), generator=generator) * _FLAT_NOISE
        return (mean + noise).round().clamp(0, 255).to(frame.dtype)
    if kind == "scramble":
        order = torch.randperm(height * width, generator=generator)
        return frame.reshape(channels, -1)[:, order].reshape(channels, height, width)
    raise ValueError(f"unknown frame-drop kind {kind!r}; choose from {DROP_KINDS}")


@dataclass(frozen=True)
class FrameDrop:
    """Replace each frame of a window with probability ``probability`` before ``transform``.

    At least one frame of every window is kept, so there is always something to borrow from;
    masks are untouched (they show the true scene). Single frames (images) pass through.

    Args:
        transform: the augmentation that follows (``TrainTransform``).
        probability: chance that a frame is dropped, in [0, 1).
    """

    transform: Transform
    probability: float

    def __post_init__(self) -> None:
        if not 0 <= self.probability < 1:
            raise ValueError(f"frame-drop probability must be in [0, 1), got {self.probability}")

    def __call__(
        self, images: Tensor, masks: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        frames = images.shape[0]
        if generator is None or self.probability == 0 or frames < 2:
            return self.transform(images, masks, generator)
        # every window draws these three in the same order, then one replacement per dropped
        # frame: what follows is still a function of the sample's seed alone (exact resume)
        drop = torch.rand(frames, generator=generator) < self.probability
        kinds = torch.randint(0, len(DROP_KINDS), (frames,), generator=generator)
        keep = int(torch.randint(0, frames, (), generator=generator))
        if bool(drop.all()):
            drop[keep] = False
        if bool(drop.any()):
            images = images.clone()
            for t in drop.nonzero().flatten().tolist():
                images[t] = uninformative_frame(images[t], DROP_KINDS[int(kinds[t])], generator)
        return self.transform(images, masks, generator)
