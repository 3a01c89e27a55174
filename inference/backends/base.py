"""The one interface every inference backend implements.

A backend takes what the exported ONNX graph takes — RGB float32 pixels in 0..255, batch
first — and returns float32 logits at the input's size. Normalisation is the backend's job
(the ONNX and TensorRT graphs carry it inside, the PyTorch backend applies the checkpoint's),
so the service's pre- and post-processing is identical whichever backend runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from ccnet.inference.metadata import check_metadata, check_model_name
from ccnet.inference.model_card import training_card
from ccnet.inference.options import DEFAULT_CLIP_WINDOW

if TYPE_CHECKING:
    from ccnet.inference.backends.threads import ThreadPolicy
    from ccnet.inference.precision.policy import PrecisionChoice

__all__ = ["BackendError", "InferenceBackend", "ModelInfo", "Runner", "info_from_meta"]

ModelKind = Literal["image", "video"]
# one forward pass at a fixed precision: float32 RGB batch → float32 logits (the gate's unit)
Runner = Callable[[np.ndarray], np.ndarray]


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
        self.precision = "fp32"  # what ``infer`` computes in (see ``use_precision``)
        # how it was chosen (set by ``precision.apply_precision``; None: never asked)
        self.precision_choice: PrecisionChoice | None = None
        # intra-op threads per pass from the load; None: the runtime's fixed setting
        self.thread_policy: ThreadPolicy | None = None

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

    def precision_runners(self, precisions: Sequence[str]) -> tuple[Runner, dict[str, Runner]]:
        """(fp32 runner, {precision: runner}) for the parity gate; each runner is one
        forward pass as a lone request would run it. Backends with reduced-precision paths
        override this; the rest serve fp32 only."""
        if any(p != "fp32" for p in precisions):
            raise BackendError(f"the {self.name} backend runs fp32 only, not {list(precisions)}")
        return self.infer, {}

    def use_precision(self, precision: str) -> None:
        """Make ``infer`` compute in ``precision`` (one of ``precision_runners``' paths)."""
        if precision != "fp32":
            raise BackendError(f"the {self.name} backend runs fp32 only, not {precision}")
        self.precision = precision

    def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing
        """Release what the backend holds (sessions, GPU memory)."""


def info_from_meta(name: str | None, meta: dict[str, Any], source: Path) -> ModelInfo:
    """The model's description from its metadata, every field checked first (a model file
    is untrusted input: ``ccnet.inference.metadata``)."""
    check_metadata(meta, source)
    config = meta.get("config", {})
    video = bool(config.get("video"))
    return ModelInfo(
        name=check_model_name(name or config.get("name") or source.stem, f"{source}: name"),
        kind="video" if video else "image",
        classes=list(meta["classes"]),
        palette=[list(c) for c in meta["palette"]],
        window=int(config.get("clip_length") or DEFAULT_CLIP_WINDOW) if video else None,
        source=str(source),
        extra={"training": training_card(meta)},  # what it knows: /v1/models, the demo page
    )
