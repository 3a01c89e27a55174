"""TensorBoard scalars and pictures, or nothing: training must not fail because logging is
unavailable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ScalarLog"]


class ScalarLog:
    """Writes scalars to ``folder`` with TensorBoard's ``SummaryWriter`` when enabled and
    installed (the ``train`` extra); otherwise every call is a no-op (with one notice)."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self._writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print(
                "note: tensorboard is not installed (pip install -e '.[train]'); "
                "no scalars are written",
                file=sys.stderr,
            )
            return
        self._writer = SummaryWriter(log_dir=str(folder))

    @property
    def enabled(self) -> bool:
        """Whether anything is written (pictures are only rendered then)."""
        return self._writer is not None

    def add(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def add_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 picture."""
        if self._writer is not None:
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
