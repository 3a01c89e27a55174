"""Fixtures every test folder shares: real photographs and small media (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from ccnet.model.samples import sample_photograph

    return np.array(sample_photograph("astronaut"))


@pytest.fixture(scope="session")
def small_rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def gif_clip() -> bytes:
    """scikit-image's animated GIF (24 frames of 25×14)."""
    import skimage.data

    return (Path(skimage.data.__file__).parent / "no_time_for_that_tiny.gif").read_bytes()
