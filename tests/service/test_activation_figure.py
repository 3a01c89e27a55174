"""The memory admission's activation figure does not depend on what the process did before
(issue 22 #8: a model hot-reloaded into a warm server was charged 0 B per pixel)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ccnet.inference.demo import BUNDLED_MODELS
from ccnet.model.files import file_sha256
from ccnet.service.core.config import Settings
from ccnet.service.core.memory import peak_growth_bytes, pin_malloc_thresholds
from ccnet.service.metrics import ServiceMetrics
from ccnet.service.reload import ModelVersion
from ccnet.service.served import ModelBuilder


def test_a_reloaded_model_is_charged_as_much_as_the_first_load(tmp_path: Path) -> None:
    if peak_growth_bytes(lambda: None) is None:
        pytest.skip("no /proc/self/clear_refs: resident-set growth cannot be measured")
    pin_malloc_thresholds()  # as the app does
    settings = Settings(precision="fp32", log_format="text", cache_dir=tmp_path / "cache")
    builder = ModelBuilder(settings, ServiceMetrics())
    path = BUNDLED_MODELS[0]
    version = ModelVersion(path, file_sha256(path), time.time())
    figures = []
    for _ in range(2):
        served = builder.build(None, path, version, taken=())
        figures.append(served.activation_per_pixel)
        for _ in range(3):  # serving work that leaves freed memory in the process
            served.backend.infer(np.full((4, 3, 384, 384), 127.0, np.float32))
        served.close()
    first, reloaded = figures
    assert first > 16, figures  # a forward pass of ccnet-tiny holds far more than 16 B/pixel
    assert reloaded >= first, figures  # the old code measured 0 in the warm process
    kept = list((tmp_path / "cache" / "activation").glob(f"{version.sha256}-*.json"))
    assert len(kept) == 1
