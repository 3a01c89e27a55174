"""The model file formats and the backends that run them: one table for every layer.

A checkpoint (``.pt``) runs on torch, an export (``.onnx``) on onnxruntime, an engine
(``.engine``/``.plan``) on tensorrt, unless a backend is named; the prepare step, the loader,
the model folder's watcher and the commands all read these names from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = [
    "BACKENDS",
    "DEFAULT_CLIP_WINDOW",
    "ENGINE_SUFFIXES",
    "MODEL_SUFFIXES",
    "BackendName",
    "backend_for_file",
]

BackendName = Literal["torch", "onnxruntime", "tensorrt"]
BACKENDS: tuple[BackendName, ...] = ("torch", "onnxruntime", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan")
# every file a model folder or ``--model`` may name
MODEL_SUFFIXES = (".pt", ".onnx", *ENGINE_SUFFIXES)
# frames per window of a clip model whose metadata records none (CCNet3D's default)
DEFAULT_CLIP_WINDOW = 4


def backend_for_file(path: Path) -> BackendName:
    """The backend a model file runs on when none is asked for: ``.onnx`` on onnxruntime,
    ``.engine``/``.plan`` on tensorrt, anything else (checkpoints) on torch."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    return "tensorrt" if suffix in ENGINE_SUFFIXES else "torch"
