"""Fixtures for the HTTP service: apps on the bundled demo models, sample media."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.core.config import Settings
from service.main import create_app


def make_client(**overrides: object) -> TestClient:
    """A started app (models loaded) with settings ``overrides``; use as a context manager."""
    from export.prepare import prepare_served
    from service.backends.loading import effective_backend

    settings = Settings(log_format="text", log_level="warning", **overrides)
    for _, path in settings.model_sources():  # as `ccnet serve` does before its workers
        # a file that cannot be prepared fails when the app loads it, as in a served one
        with contextlib.suppress(OSError, ValueError):
            prepare_served(path, effective_backend(path, settings), settings)
    return TestClient(create_app(settings, background_load=False))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with make_client(max_batch_wait_ms=2) as started:
        yield started


def png_bytes(rgb: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(rgb)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    import skimage.data

    return np.asarray(skimage.data.astronaut())


@pytest.fixture(scope="session")
def small_rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def gif_clip() -> bytes:
    """scikit-image's animated GIF (24 frames of 25×14)."""
    import skimage.data

    return (Path(skimage.data.__file__).parent / "no_time_for_that_tiny.gif").read_bytes()
