"""PyTorch backend: a checkpoint in eager mode on CPU or CUDA (fp16 on CUDA)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from model import Normalization

from .base import BackendError, InferenceBackend, ModelInfo

__all__ = ["TorchBackend", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when one is visible; ``cuda`` without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("device 'cuda' was asked for, but PyTorch sees no CUDA device")
    return torch.device(device)


class TorchBackend(InferenceBackend):
    """Eager PyTorch.

    Args:
        info: the model's description.
        model: a CCNet or CCNet3D; put in eval mode.
        meta: the checkpoint metadata (its ``normalization`` is applied here).
        device: "auto", "cpu" or "cuda".
        fp16: run in half precision when on CUDA (ignored on CPU, where it is slower).
    """

    name = "torch"

    def __init__(
        self,
        info: ModelInfo,
        model: torch.nn.Module,
        meta: Mapping[str, Any],
        *,
        device: str = "auto",
        fp16: bool = True,
    ) -> None:
        super().__init__(info)
        self._device = resolve_device(device)
        self._dtype = torch.float16 if fp16 and self._device.type == "cuda" else torch.float32
        # Images run channels-last: oneDNN's (and cuDNN's tensor-core) convolutions are faster
        # on that layout (ccnet-tiny on one CPU thread: about 16% per image), and the
        # attention op keeps whatever layout it is given. Clips keep the default layout.
        self._memory_format = (
            torch.channels_last if info.kind == "image" else torch.contiguous_format
        )
        self.model = model.eval().to(self._device, self._dtype, memory_format=self._memory_format)
        self.normalization = Normalization(**meta["normalization"])

    @property
    def device(self) -> str:
        return str(self._device)

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device)
        x = self.normalization.normalize(x, channel_dim=1).to(self._dtype)
        logits = self.model(x.contiguous(memory_format=self._memory_format))
        return logits.float().cpu().numpy()
