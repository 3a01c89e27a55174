"""Shared fixtures for the export tests: tiny checkpoints and their ONNX exports (built once).

Each export costs seconds (torch.export + translation), so the three exports the tests read
(2D fp32, 2D fp16, 3D fp32) are session fixtures; tests copy what they modify.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ccnet.model import build_model, save_checkpoint

# Small check sizes keep the suite fast; the second is not a multiple of the output stride.
CHECK_SIZES_2D = ((64, 96), (75, 57))
CHECK_SIZES_3D = ((48, 64), (41, 35))
NUM_CLASSES = 3


def _tiny_checkpoint(name: str, path: Path) -> Path:
    """A seeded tiny model whose attention matters (gamma 0.5 instead of the initial 0)."""
    torch.manual_seed(1)
    model = build_model(name, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "gamma"):
                module.gamma.fill_(0.5)
    save_checkpoint(model, {"classes": ["road", "car", "sky"]}, path)
    return path


@pytest.fixture(scope="session")
def checkpoint_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_checkpoint("ccnet-tiny", tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def checkpoint_3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_checkpoint("ccnet3d-tiny", tmp_path_factory.mktemp("ckpt3d") / "tiny3d.pt")


@pytest.fixture(scope="session")
def onnx_2d(checkpoint_2d: Path, tmp_path_factory: pytest.TempPathFactory):
    from ccnet.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx_fp32")
    return export_onnx(checkpoint_2d, out, check_sizes=CHECK_SIZES_2D, progress=None)


@pytest.fixture(scope="session")
def onnx_2d_fp16(checkpoint_2d: Path, tmp_path_factory: pytest.TempPathFactory):
    from ccnet.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx_fp16")
    return export_onnx(checkpoint_2d, out, dtype="fp16", check_sizes=CHECK_SIZES_2D, progress=None)


@pytest.fixture(scope="session")
def onnx_3d(checkpoint_3d: Path, tmp_path_factory: pytest.TempPathFactory):
    from ccnet.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx_3d")
    return export_onnx(checkpoint_3d, out, check_sizes=CHECK_SIZES_3D, progress=None)
