"""Issue 22 #2 (sidecar paths, owned with issue 21 #11): an export pair renamed as the README
says (``mine.onnx`` + ``mine.json``), or a single ``lonely.onnx`` with its ``lonely.json``,
loads and serves: the sidecar describes the ``.onnx`` beside it with its own stem."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ccnet.inference.backends.loading import load_backend
from ccnet.inference.options import LoadOptions
from ccnet.service.core.config import Settings


def _renamed(export, folder: Path, stem: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(export.model_path, folder / f"{stem}.onnx")
    shutil.copyfile(export.sidecar_path, folder / f"{stem}.json")
    return folder / f"{stem}.onnx"


def test_a_renamed_export_pair_loads_and_runs(onnx_2d, tmp_path: Path) -> None:
    path = _renamed(onnx_2d, tmp_path / "models", "mine")
    options = LoadOptions(backend="onnxruntime", precision="fp32", cache_dir=tmp_path / "cache")
    backend = load_backend(None, path, options)
    try:
        logits = backend.infer(np.full((1, 3, 64, 64), 127.0, np.float32))
        assert logits.shape[:2] == (1, len(backend.info.classes))
    finally:
        backend.close()


def test_serve_takes_a_lonely_renamed_export(onnx_2d, tmp_path: Path) -> None:
    """What ``ccnet serve --model lonely.onnx`` checks before it starts: the pair is found."""
    from ccnet.export.prepare import prepare_served

    path = _renamed(onnx_2d, tmp_path, "lonely")
    settings = Settings(models=[str(path)], backend="onnxruntime", cache_dir=tmp_path / "c")
    prepare_served(path, "onnxruntime", settings)
    backend = load_backend(None, path, settings.load_options())
    backend.close()
