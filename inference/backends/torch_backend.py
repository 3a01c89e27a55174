"""PyTorch backend: a checkpoint in eager mode, fp32 or bf16 on CPU, fp32 or fp16 on CUDA.

bf16 is autocast over the fp32 weights (convolutions and GEMMs in bf16 through oneDNN, which
uses AVX512-BF16 or AMX tiles; normalisation, softmax and the final resize in float32; the
criss-cross attention op multiplies in bf16 and takes its softmax in float32). One module
serves both precisions, so the parity gate and ``use_precision`` need no second copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ccnet.inference.backends.base import BackendError, InferenceBackend, ModelInfo, Runner
from ccnet.inference.backends.threads import ThreadPolicy
from ccnet.inference.precision.policy import autocast
from ccnet.model import Normalization

__all__ = ["TorchBackend", "resolve_device"]

_CPU_PRECISIONS = ("fp32", "bf16")
_CUDA_PRECISIONS = ("fp32", "fp16")


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when one is visible; ``cuda`` without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("device 'cuda' was asked for, but PyTorch sees no CUDA device")
    return torch.device(device)


def _channels_last_2d(model: torch.nn.Module) -> None:
    """Channels-last weights for the 2D convolutions of a clip model (its backbone runs per
    frame on (B·T, C, H, W) views): oneDNN then picks its NHWC kernels although the clip
    tensors stay contiguous. The 3D attention's weights keep their layout. ccnet3d-tiny,
    4×160², one thread: 118 → 94 ms in fp32, 88 → 65 ms in bf16, same masks."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)


class TorchBackend(InferenceBackend):
    """Eager PyTorch.

    Args:
        info: the model's description.
        model: a CCNet or CCNet3D; put in eval mode.
        meta: the checkpoint metadata (its ``normalization`` is applied here).
        device: "auto", "cpu" or "cuda".
        fp16: start in half precision when on CUDA (ignored on CPU).
        precision: start in this precision instead ("fp32", "bf16" on CPU, "fp16" on CUDA).
        thread_policy: intra-op threads per pass from the load (CPU); None keeps PyTorch's
            process-wide setting.
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
        precision: str | None = None,
        thread_policy: ThreadPolicy | None = None,
    ) -> None:
        super().__init__(info)
        self._device = resolve_device(device)
        # Images run channels-last: oneDNN's (and cuDNN's tensor-core) convolutions are faster
        # on that layout (measured in bench/inference.py, BENCHMARKS.md), and the attention
        # op keeps whatever layout it is given. Clips keep the default layout.
        self._memory_format = (
            torch.channels_last if info.kind == "image" else torch.contiguous_format
        )
        self.model = model.eval().to(self._device, memory_format=self._memory_format)
        if info.kind == "video":
            _channels_last_2d(self.model)
        self.normalization = Normalization(**meta["normalization"])
        self.thread_policy = thread_policy if self._device.type == "cpu" else None
        cuda = self._device.type == "cuda"
        self.use_precision(precision or ("fp16" if cuda and fp16 else "fp32"))

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def precisions(self) -> tuple[str, ...]:
        """What this device can compute in (the gate decides what is worth it)."""
        return _CUDA_PRECISIONS if self._device.type == "cuda" else _CPU_PRECISIONS

    def use_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise BackendError(
                f"the torch backend on {self._device.type} runs {', '.join(self.precisions)}, "
                f"not {precision}"
            )
        # fp16 converts the weights (CUDA); bf16 autocasts over float32 weights (CPU)
        dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model.to(dtype)
        self.precision = precision

    def precision_runners(self, precisions: Sequence[str]) -> tuple[Runner, dict[str, Runner]]:
        if self.precision != "fp32":
            self.use_precision("fp32")  # fp16 weights would make "fp32" a lie
        unknown = [p for p in precisions if p not in self.precisions or p == "fp16"]
        if unknown:
            raise BackendError(f"no gated torch path for {unknown} on {self._device.type}")

        def runner(precision: str) -> Runner:
            return lambda batch: self._run(batch, precision)

        return runner("fp32"), {p: runner(p) for p in precisions}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, self.precision)

    @torch.inference_mode()
    def _run(self, batch: np.ndarray, precision: str) -> np.ndarray:
        if self.thread_policy is None:
            return self._forward(batch, precision)
        with self.thread_policy.slot() as threads:
            # per calling thread: OpenMP's thread count is a per-thread setting, so
            # concurrent workers each keep their own
            torch.set_num_threads(threads)
            return self._forward(batch, precision)

    def _forward(self, batch: np.ndarray, precision: str) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device)
        x = self.normalization.normalize(x, channel_dim=1)
        if precision == "fp16":
            x = x.half()
        x = x.contiguous(memory_format=self._memory_format)
        # fp16 converted the weights (use_precision); bf16 autocasts over float32 weights
        with autocast("bf16" if precision == "bf16" else "fp32", self._device.type):
            logits = self.model(x)
        return logits.float().cpu().numpy()
