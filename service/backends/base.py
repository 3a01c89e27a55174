"""The one interface every inference backend implements.

A backend takes what the exported ONNX graph takes — RGB float32 pixels in 0..255, batch
first — and returns float32 logits at the input's size. Normalisation is the backend's job
(the ONNX and TensorRT graphs carry it inside, the PyTorch backend applies the checkpoint's),
so the service's pre- and post-processing is identical whichever backend runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

__all__ = ["BackendError", "InferenceBackend", "ModelInfo"]

ModelKind = Literal["image", "video"]


class BackendError(RuntimeError):
    """A backend cannot be created here (missing library, GPU or file)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to know about a loaded model, whatever runs it."""

    name: str
    kind: ModelKind
    classes: list[str]
    palette: list[list[int]]
    window: int | None = None  # frames per window for video models
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class InferenceBackend(ABC):
    """Runs one model; ``infer`` may be called from several worker threads if
    ``thread_safe``."""

    name: ClassVar[str]
    # whether several threads may call ``infer`` at once (parallel inference workers)
    thread_safe: ClassVar[bool] = True

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    @property
    def device(self) -> str:
        """Where it runs, for /v1/models and logs."""
        return "cpu"

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch.

        Args:
            batch: float32 RGB in 0..255, (B, 3, H, W) for images or (B, 3, T, H, W) for clips.

        Returns:
            float32 logits (B, K, H, W) or (B, K, T, H, W).
        """

    def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing
        """Release what the backend holds (sessions, GPU memory)."""
