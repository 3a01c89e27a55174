"""Hot model reload: the folder watcher, the registry's swap, and a live server swapping a
model under a client loop."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import numpy as np
import pytest

from ccnet.model.files import file_sha256
from ccnet.service.core.config import Settings
from ccnet.service.metrics import ServiceMetrics
from ccnet.service.registry import ModelRegistry
from ccnet.service.reload import LoadFailure, ModelVersion, ModelWatcher
from ccnet.service.served import ModelLoadError, ServedImageModel
from tests.service.conftest import png_bytes
from tests.service.live import serve

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "inference" / "assets" / "ccnet-tiny.pt"


class Recorder:
    """A reload target that records what the watcher asks of it (and can be made to fail)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []  # (op, file content or name, prev)
        self.fail: str | None = None

    def replace_from_file(self, path: Path, version: ModelVersion, previous: str | None) -> str:
        content = path.read_text()
        assert version.sha256 == file_sha256(path)
        if self.fail is not None and self.fail in content:
            raise ValueError(f"{path}: not a checkpoint")
        self.calls.append(("replace", content, previous))
        return path.stem

    def unload(self, name: str) -> None:
        self.calls.append(("unload", name, None))


def _write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


def _watcher(folder: Path, target: Recorder, **kwargs) -> tuple[ModelWatcher, dict]:
    failures: dict[str, LoadFailure] = {}

    def on_failure(failure: LoadFailure | None, file: str) -> None:
        if failure is None:
            failures.pop(file, None)
        else:
            failures[file] = failure

    watcher = ModelWatcher(folder, target, interval_s=0, on_failure=on_failure, **kwargs)
    return watcher, failures


def test_new_file_loads_after_it_settles(folder: Path) -> None:
    target = Recorder()
    watcher, _ = _watcher(folder, target)
    _write(folder / "a.pt", "one", 1_000)
    (folder / "notes.txt").write_text("not a model")
    first = watcher.poll()
    assert first.pending == ["a.pt"] and target.calls == []
    second = watcher.poll()
    assert second.loaded == ["a"] and target.calls == [("replace", "one", None)]
    assert watcher.poll().changed is False  # nothing new: nothing loads again


def test_reload_request_loads_at_once(folder: Path) -> None:
    target = Recorder()
    watcher, _ = _watcher(folder, target)
    _write(folder / "a.pt", "one", 1_000)
    assert watcher.poll(settle=False).loaded == ["a"]


def test_replaced_content_reloads_touch_does_not(folder: Path) -> None:
    target = Recorder()
    _write(folder / "a.pt", "one", 1_000)
    seed = ModelVersion(folder / "a.pt", file_sha256(folder / "a.pt"), time.time())
    watcher, _ = _watcher(folder, target, initial=[(folder / "a.pt", "a", seed)])
    assert watcher.poll(settle=False).changed is False  # seeded: not loaded twice
    os.utime(folder / "a.pt", ns=(5_000, 5_000))  # touched, same bytes
    assert watcher.poll(settle=False).changed is False and target.calls == []
    _write(folder / "a.pt", "two", 9_000)
    assert watcher.poll(settle=False).loaded == ["a"]
    assert target.calls == [("replace", "two", "a")]


def test_half_written_file_waits_for_the_writer(folder: Path) -> None:
    target = Recorder()
    watcher, _ = _watcher(folder, target)
    _write(folder / "a.pt", "par", 1_000)
    assert watcher.poll().pending == ["a.pt"]
    _write(folder / "a.pt", "partial and then the rest", 2_000)  # still being written
    assert watcher.poll().pending == ["a.pt"] and target.calls == []
    assert watcher.poll().loaded == ["a"]
    assert target.calls == [("replace", "partial and then the rest", None)]


def test_removed_file_unloads(folder: Path) -> None:
    target = Recorder()
    watcher, _ = _watcher(folder, target)
    _write(folder / "a.pt", "one", 1_000)
    watcher.poll(settle=False)
    (folder / "a.pt").unlink()
    report = watcher.poll()
    assert report.unloaded == ["a"] and target.calls[-1] == ("unload", "a", None)


def test_failure_keeps_old_version_is_reported_then_recovers(folder: Path) -> None:
    target = Recorder()
    watcher, failures = _watcher(folder, target)
    _write(folder / "a.pt", "one", 1_000)
    watcher.poll(settle=False)
    target.fail = "broken"
    _write(folder / "a.pt", "broken bytes", 2_000)
    report = watcher.poll(settle=False)
    assert report.failed == ["a.pt"] and report.loaded == []
    assert failures["a.pt"].message == "ValueError: a.pt: not a checkpoint"  # no directories
    assert failures["a.pt"].sha256 == file_sha256(folder / "a.pt")
    assert [op for op, *_ in target.calls] == ["replace"]  # never unloaded
    assert watcher.poll(settle=False).changed is False  # the same bad bytes are not retried
    _write(folder / "a.pt", "three", 3_000)
    report = watcher.poll(settle=False)
    assert report.loaded == ["a"] and failures == {}
    assert target.calls[-1] == ("replace", "three", "a")  # replaces the version still serving


def test_export_is_retried_when_its_sidecar_arrives(folder: Path) -> None:
    target = Recorder()
    target.fail = "needs-sidecar"
    watcher, failures = _watcher(folder, target)
    _write(folder / "m.onnx", "needs-sidecar", 1_000)
    assert watcher.poll(settle=False).failed == ["m.onnx"]
    target.fail = None  # the loader now finds the sidecar
    _write(folder / "m.json", "{}", 2_000)
    assert watcher.poll(settle=False).loaded == ["m"] and failures == {}
    _write(folder / "m.json", '{"changed": 1}', 3_000)  # a new sidecar alone reloads too
    assert watcher.poll(settle=False).loaded == ["m"]
    os.utime(folder / "m.json", ns=(4_000, 4_000))  # touched only
    assert watcher.poll(settle=False).changed is False


# ------------------------------------------------------------------ the registry's swap


def _renamed_checkpoint(destination: Path, classes: list[str]) -> Path:
    from ccnet.model import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(TINY)
    assert len(classes) == len(meta["classes"])
    save_checkpoint(model, {**meta, "classes": classes}, destination)
    return destination


def _new_classes() -> list[str]:
    from ccnet.model import load_checkpoint

    _, meta = load_checkpoint(TINY)
    return [f"renamed-{i}" for i in range(len(meta["classes"]))]


def test_registry_swap_waits_for_requests_in_flight(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(TINY, models / "tiny.pt")
    settings = Settings(model_dir=models, precision="fp32", log_format="text", max_batch_wait_ms=1)
    registry = ModelRegistry(settings, ServiceMetrics())
    registry.load()
    try:
        old = registry.get(None, ServedImageModel)
        name = old.info.name
        assert old.version is not None and old.version.path.name == "tiny.pt"
        closed = threading.Event()
        real_close = old.close
        old.close = lambda: (real_close(), closed.set())  # type: ignore[method-assign]
        held = registry.lease(lambda: registry.get(name, ServedImageModel))

        classes = _new_classes()
        replacement = _renamed_checkpoint(tmp_path / "next.pt", classes)
        os.replace(replacement, models / "tiny.pt")
        version = ModelVersion(models / "tiny.pt", file_sha256(models / "tiny.pt"), time.time())
        assert registry.replace_from_file(models / "tiny.pt", version, name) == name
        new = registry.get(name, ServedImageModel)
        assert new is not old and new.info.classes == classes
        assert registry.defaults["image"] == name
        # the request holding the old version still runs on it
        result = held.batcher.submit(np.full((3, 32, 32), 127.0, np.float32)).result(30)
        assert result is not None and not closed.is_set()
        held.release()
        assert closed.wait(10)  # retired once its last request let go

        (models / "tiny.pt").write_bytes(b"not a checkpoint")
        broken = ModelVersion(models / "tiny.pt", file_sha256(models / "tiny.pt"), time.time())
        with pytest.raises(ModelLoadError):
            registry.replace_from_file(models / "tiny.pt", broken, name)
        assert registry.get(name, ServedImageModel) is new  # the last good version serves
    finally:
        registry.close()


# ------------------------------------------------------------------ a live server


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(TINY, models / "tiny.pt")
    log = tmp_path / "server.log"
    env = {
        "CCNET_MODEL_DIR": str(models),
        "CCNET_MODEL_POLL_S": "0.3",
        "CCNET_PRECISION": "fp32",
        "CCNET_MAX_BATCH_WAIT_MS": "5",
        "CCNET_CACHE_DIR": str(tmp_path / "cache"),
        "CCNET_API_KEY": "reload-key",
    }
    with serve(log, env, ready_s=40, stop_s=20) as base:
        yield base, models, log


def _listing(base: str) -> dict:
    answer = httpx2.get(f"{base}/v1/models", headers={"X-API-Key": "reload-key"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
def test_live_swap_under_load_then_corrupt_file_keeps_last_good(live, tmp_path: Path) -> None:
    base, models, log = live
    before = _listing(base)
    assert before["failures"] == []
    (entry,) = before["models"]
    assert entry["version"]["file"] == "tiny.pt"
    assert entry["version"]["sha256"] == file_sha256(models / "tiny.pt")
    assert str(models) not in str(before)  # no directory paths in answers
    old_classes = [c["name"] for c in entry["classes"]]
    new_classes = _new_classes()
    assert new_classes != old_classes

    body = png_bytes(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    errors: list[str] = []
    seen: set[tuple[str, ...]] = set()
    done = threading.Event()

    def client() -> None:
        with httpx2.Client(base_url=base, headers={"X-API-Key": "reload-key"}) as http:
            while not done.is_set():
                try:
                    answer = http.post(
                        "/v1/segment?output=json",
                        files={"image": ("x.png", body, "image/png")},
                        timeout=30,
                    )
                except httpx2.TransportError as error:
                    errors.append(repr(error))
                    continue
                if answer.status_code != 200:
                    errors.append(f"{answer.status_code} {answer.text[:200]}")
                    continue
                classes = answer.json().get("classes")
                if isinstance(classes, list):
                    seen.add(tuple(str(c.get("name", c)) for c in classes if isinstance(c, dict)))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)  # requests are flowing on the old version
        staged = _renamed_checkpoint(tmp_path / "staging" / "tiny.pt", new_classes)
        os.replace(staged, models / "tiny.pt")  # atomic: never half-written in the folder
        new_hash = file_sha256(models / "tiny.pt")
        swapped = _wait_for(
            lambda: next(
                (
                    m
                    for m in _listing(base)["models"]
                    if (m.get("version") or {}).get("sha256") == new_hash
                ),
                None,
            ),
            30,
            "the new version to serve",
        )
        time.sleep(1.0)  # and requests keep flowing on the new one
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == [], errors[:5]
    # clients were answered by both versions: the old classes before, the new ones after
    assert any(names and set(names) <= set(old_classes) for names in seen), seen
    assert any(names and set(names) <= set(new_classes) for names in seen), seen
    assert [c["name"] for c in swapped["classes"]] == new_classes
    assert swapped["name"] == entry["name"]

    # a corrupt file replacing it: the last good version keeps serving, the failure is listed
    (tmp_path / "staging" / "tiny.pt").write_bytes(b"\x00not a checkpoint")
    os.replace(tmp_path / "staging" / "tiny.pt", models / "tiny.pt")
    reload = httpx2.post(
        f"{base}/v1/models/reload", headers={"X-API-Key": "reload-key"}, timeout=30
    )
    # this request found it, or the timer's poll did just before: a failing file either way
    assert reload.status_code == 422, reload.text
    error = reload.json()["error"]
    assert error["code"] == "reload_failed" and "tiny.pt" in error["message"]
    listing = _listing(base)
    (failure,) = listing["failures"]
    assert failure["file"] == "tiny.pt" and failure["sha256"] == file_sha256(models / "tiny.pt")
    assert failure["error"] and str(models) not in failure["error"]
    (still,) = listing["models"]
    assert still["version"]["sha256"] == new_hash
    assert [c["name"] for c in still["classes"]] == new_classes
    segmented = httpx2.post(
        f"{base}/v1/segment",
        files={"image": ("x.png", body, "image/png")},
        headers={"X-API-Key": "reload-key"},
        timeout=30,
    )
    assert segmented.status_code == 200
    assert "tiny.pt" in log.read_text()  # the log has the details


def test_reload_endpoint_needs_key_and_a_folder() -> None:
    from tests.service.conftest import make_client

    with make_client(api_key="k", precision="fp32") as client:
        assert client.post("/v1/models/reload").status_code == 401
        answer = client.post("/v1/models/reload", headers={"X-API-Key": "k"})
        assert answer.status_code == 409
        assert answer.json()["error"]["code"] == "no_model_dir"


def test_reloaded_checkpoint_on_onnxruntime_is_prepared_by_serve(tmp_path: Path) -> None:
    """Under onnxruntime a worker only looks prepared exports up: without the preparer that
    ``ccnet serve`` gives the app, a new checkpoint fails (the old version serving); with it,
    the checkpoint is exported (parity-checked) and swapped in."""
    pytest.importorskip("onnxruntime")
    from ccnet.export.prepare import prepare_served
    from ccnet.service.cli import _prepare_for_reload

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(TINY, models / "tiny.pt")
    settings = Settings(
        model_dir=models,
        backend="onnxruntime",
        precision="fp32",
        cache_dir=tmp_path / "cache",
        log_format="text",
    )
    prepare_served(models / "tiny.pt", "onnxruntime", settings)  # as `ccnet serve` does first
    registry = ModelRegistry(settings, ServiceMetrics())
    registry.load()
    try:
        old = registry.get(None, ServedImageModel)
        classes = _new_classes()
        os.replace(_renamed_checkpoint(tmp_path / "next.pt", classes), models / "tiny.pt")
        version = ModelVersion(models / "tiny.pt", file_sha256(models / "tiny.pt"), time.time())
        with pytest.raises(ModelLoadError) as failed:
            registry.replace_from_file(models / "tiny.pt", version, old.info.name)
        assert "prepare" in str(failed.value.__cause__).lower()
        assert registry.get(None, ServedImageModel) is old
        registry.preparer = _prepare_for_reload
        registry.replace_from_file(models / "tiny.pt", version, old.info.name)
        new = registry.get(None, ServedImageModel)
        assert new is not old and new.backend.name == "onnxruntime"
        assert new.info.classes == classes
    finally:
        registry.close()
