"""Fixtures for the HTTP service: apps on the bundled demo models, sample media."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ccnet.service.core.config import Settings
from ccnet.service.main import create_app


def make_client(**overrides: object) -> TestClient:
    """A started app (models loaded) with settings ``overrides``; use as a context manager."""
    from ccnet.export.prepare import prepare_served

    settings = Settings(log_format="text", log_level="warning", **overrides)
    for _, path in settings.model_sources():  # as `ccnet serve` does before its workers
        # a file that cannot be prepared fails when the app loads it, as in a served one
        with contextlib.suppress(OSError, ValueError):
            prepare_served(path, settings.load_options().backend_for(path), settings)
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
