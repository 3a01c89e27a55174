"""Issue 21 #9, #10, #17: the models folder is written by someone else.

A file name that is not UTF-8 is logged and skipped (it broke /v1/models and the reload
endpoint), reloads wait on a thread of their own (concurrent reloads used up the request
threads), and a symlinked model is the folder's model, not a duplicate on every reload.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import pytest

from ccnet.service.core.config import Settings
from ccnet.service.metrics import ServiceMetrics
from ccnet.service.registry import ModelRegistry
from ccnet.service.reload import ModelWatcher
from tests.service.test_reload import TINY, Recorder, _watcher

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file names are bytes")


def test_a_file_name_that_is_not_utf8_is_logged_and_skipped(tmp_path: Path, caplog) -> None:
    (tmp_path / "ok.pt").write_text("one")
    bad = os.fsdecode(b"caf\xe9.pt")  # Latin-1 bytes: no UTF-8 name
    (tmp_path / bad).write_text("two")
    target = Recorder()
    watcher, failures = _watcher(tmp_path, target)
    with caplog.at_level(logging.WARNING, logger="ccnet.service.reload"):
        report = watcher.poll(settle=False)
        watcher.poll(settle=False)
    assert report.loaded == ["ok"] and not report.failed
    assert [call[1] for call in target.calls] == ["one"]
    warnings = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert len(warnings) == 1 and "caf\\xe9.pt" in warnings[0]  # once, escaped
    assert not failures
    names = [path.name for _, path in Settings(model_dir=tmp_path).model_sources()]
    assert names == ["ok.pt"]


def test_reload_requests_share_one_thread_and_coalesce(tmp_path: Path) -> None:
    """While a reload is slow, more requests wait on the reload thread (never on the
    request threads), and those arriving while one is queued share it."""
    entered, release = threading.Event(), threading.Event()

    class Slow(Recorder):
        def replace_from_file(self, path, version, previous):
            entered.set()
            release.wait(30)
            return super().replace_from_file(path, version, previous)

    (tmp_path / "a.pt").write_text("one")
    watcher = ModelWatcher(tmp_path, Slow(), interval_s=0)
    try:
        first = watcher.request_poll()
        assert entered.wait(30)
        queued = [watcher.request_poll() for _ in range(50)]
        assert all(future is queued[0] for future in queued)  # one queued poll, shared
        threads = [t.name for t in threading.enumerate() if t.name.startswith("model-reload")]
        assert len(threads) == 1
        release.set()
        assert first.result(30).loaded == ["a"]
        assert queued[0].result(30).loaded == []
    finally:
        release.set()
        watcher.stop()


def test_a_symlinked_model_is_not_loaded_again_on_reload(tmp_path: Path) -> None:
    elsewhere = tmp_path / "store"
    elsewhere.mkdir()
    shutil.copy(TINY, elsewhere / "tiny-v3.pt")
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.pt").symlink_to(elsewhere / "tiny-v3.pt")
    settings = Settings(model_dir=models, precision="fp32", log_format="text")
    registry = ModelRegistry(settings, ServiceMetrics())
    registry.load()
    try:
        watcher = ModelWatcher(
            models, registry, interval_s=0, initial=registry.served_files(models)
        )
        report = watcher.poll(settle=False)
        assert report.loaded == [] and report.failed == [], report.describe()
        assert not registry.failures
    finally:
        registry.close()
