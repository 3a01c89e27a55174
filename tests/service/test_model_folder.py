"""A models folder is the model set (as Triton's repository is): files named by their stem,
no demo models beside them, a missing folder refused, a failed reload not a 2xx, and an
empty set not ready."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccnet.inference.demo import BUNDLED_MODELS
from ccnet.model.files import file_sha256
from ccnet.service.core.config import Settings
from ccnet.service.metrics import ServiceMetrics
from ccnet.service.registry import ModelRegistry
from ccnet.service.reload import ModelVersion
from ccnet.service.served import DuplicateModelError
from tests.service.conftest import make_client

ROOT = Path(__file__).resolve().parents[2]
TINY = BUNDLED_MODELS[0]  # a checkpoint whose own name is "ccnet-tiny"


def test_folder_files_are_named_by_stem_and_replace_the_demos(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    assert Settings(model_dir=models).model_sources() == []  # empty: no demo models
    shutil.copy(TINY, models / "mine.pt")
    (models / ".mine.pt.tmp").write_bytes(b"half")  # hidden: a copy being renamed in
    (models / ".hidden.pt").write_bytes(b"x")
    assert Settings(model_dir=models).model_sources() == [("mine", models / "mine.pt")]
    explicit = Settings(models=[str(TINY)], model_dir=models).model_sources()
    assert explicit == [(None, TINY), ("mine", models / "mine.pt")]


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such models folder"):
        Settings(model_dir=tmp_path / "nope").model_sources()


def test_missing_folder_fails_ccnet_serve_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ccnet", "serve", "--model-dir", str(tmp_path / "models")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "no such models folder" in line and "models" in line and "mkdir" in line


def test_a_file_named_like_a_demo_model_loads_under_its_stem(tmp_path: Path) -> None:
    """The README's cycle: an empty folder, then a retrained ccnet-tiny copied in as tiny.pt
    (old code: the demo ccnet-tiny served beside it, and the copy was refused as a duplicate
    with a hint, NAME=PATH, that cannot apply to a folder file)."""
    models = tmp_path / "models"
    models.mkdir()
    settings = Settings(model_dir=models, precision="fp32", log_format="text")
    registry = ModelRegistry(settings, ServiceMetrics())
    registry.load()
    try:
        assert len(registry) == 0
        shutil.copy(TINY, models / "tiny.pt")
        version = ModelVersion(models / "tiny.pt", file_sha256(models / "tiny.pt"), time.time())
        assert registry.replace_from_file(models / "tiny.pt", version, None) == "tiny"
        assert [s.info.name for s in registry] == ["tiny"]
    finally:
        registry.close()


def test_folder_file_colliding_with_a_named_model_says_rename(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(TINY, models / "ccnet-tiny.pt")
    settings = Settings(models=[str(TINY)], model_dir=models, precision="fp32")
    registry = ModelRegistry(settings, ServiceMetrics())
    try:
        with pytest.raises(DuplicateModelError) as refused:
            registry.load()
        message = str(refused.value)
        assert "ccnet-tiny.pt" in message and "rename the file" in message
        assert "NAME=PATH" not in message
    finally:
        registry.close()


def test_failed_reload_is_not_2xx_and_empty_folder_is_not_ready(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with make_client(model_dir=models, model_poll_s=0, precision="fp32") as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["error"]["code"] == "no_models"
        assert client.get("/healthz").status_code == 200  # alive: nothing to restart
        segment = client.post("/v1/segment", content=b"x", headers={"Content-Type": "image/png"})
        assert segment.status_code == 503 and segment.json()["error"]["code"] == "no_models"

        (models / "broken.pt").write_bytes(b"\x00not a checkpoint")
        answer = client.post("/v1/models/reload")
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["code"] == "reload_failed" and "broken.pt" in error["message"]
        assert str(models) not in error["message"]
        assert client.get("/readyz").status_code == 503
        metrics = client.get("/metrics").text
        assert 'ccnet_model_reload_failures_total{file="broken.pt"} 1.0' in metrics

        (models / "broken.pt").unlink()
        shutil.copy(TINY, models / "tiny.pt")
        answer = client.post("/v1/models/reload")
        assert answer.status_code == 200, answer.text
        assert [m["name"] for m in answer.json()["models"]] == ["tiny"]
        assert answer.json()["failures"] == []
        assert client.get("/readyz").status_code == 200
        sha256 = file_sha256(models / "tiny.pt")
        metrics = client.get("/metrics").text
        assert f'ccnet_model_version_info{{file="tiny.pt",model="tiny",sha256="{sha256}"}} 1.0' in (
            metrics
        )


def test_openapi_version_is_the_package_version_and_logs_have_no_colour_codes() -> None:
    import json
    import logging
    from importlib.metadata import version

    from ccnet.service.core.logging import JsonFormatter

    with make_client(precision="fp32") as client:
        assert client.get("/openapi.json").json()["info"]["version"] == version("ccnet-stack")
        metrics = client.get("/metrics").text
        assert f'ccnet_build_info{{version="{version("ccnet-stack")}"}} 1.0' in metrics
    record = logging.LogRecord("uvicorn.error", logging.INFO, "x", 1, "Started", (), None)
    record.color_message = "\x1b[32mStarted\x1b[0m"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "Started" and "color_message" not in line
