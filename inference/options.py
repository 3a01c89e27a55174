"""How a model file is loaded: the inference library's explicit options, and the constants
(backends, precisions, engine suffixes, default limits) every layer above shares.

The library never reads the environment; entry points do (the service's ``Settings`` builds
a ``LoadOptions`` with ``Settings.load_options()``, the commands from their flags), so
``Segmenter.from_file(path)`` follows the file and its arguments and nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ccnet.export.runtime.formats import (
    BACKENDS,
    DEFAULT_CLIP_WINDOW,
    ENGINE_SUFFIXES,
    MODEL_SUFFIXES,
    BackendName,
    backend_for_file,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_CLIP_WINDOW",
    "ENGINE_SUFFIXES",
    "MODEL_SUFFIXES",
    "PRECISIONS",
    "BackendName",
    "Device",
    "LoadOptions",
    "Precision",
    "available_cores",
    "backend_for_file",
]

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "int8", "fp16"]

PRECISIONS: tuple[Precision, ...] = ("auto", "fp32", "bf16", "int8", "fp16")
# auto: one forward pass per core (see LoadOptions.parallelism)
_CPU_THREADS_PER_WORKER = 1


@dataclass(frozen=True)
class LoadOptions:
    """Everything the loader needs besides the file.

    Args:
        backend: "torch", "onnxruntime" or "tensorrt"; None runs the file's own
            (``.pt`` on torch, ``.onnx`` on onnxruntime, an engine on tensorrt).
        device: "auto", "cpu" or "cuda".
        precision: "auto" (the fastest path that passes the parity gate here), "fp32",
            "bf16" (torch, CPU), "int8" (onnxruntime, CPU) or "fp16" (CUDA).
        fp16: whether ``auto`` may pick half precision on CUDA.
        threads: intra-op threads per forward pass; 0 shares the cores among the workers.
        inference_workers: forward passes in parallel per image model; 0 = one per core.
        processes: processes sharing this machine's cores (the service's ``--workers``).
        cache_dir: prepared exports, engines, int8 models and gate figures.
        trt_plugin: the criss-cross attention TensorRT plugin library.
        max_side, max_video_side, max_batch_size: the largest inputs an engine's optimisation
            profile must cover.
    """

    backend: BackendName | None = None
    device: Device = "auto"
    precision: Precision = "auto"
    fp16: bool = True
    threads: int = 0
    inference_workers: int = 0
    processes: int = 1
    cache_dir: Path = field(default_factory=lambda: Path("~/.cache/ccnet").expanduser())
    trt_plugin: Path | None = None
    max_side: int = 1024
    max_video_side: int = 512
    max_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        for name in ("threads", "inference_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("processes", "max_side", "max_video_side", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def replace(self, **changes: object) -> LoadOptions:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def backend_for(self, path: Path) -> BackendName:
        """The backend that runs ``path``: the one asked for, else the file's own."""
        return self.backend if self.backend is not None else backend_for_file(path)

    def parallelism(self, backend: str | None = None) -> tuple[int, int]:
        """(inference workers per image model, intra-op threads per forward pass).

        On a GPU one worker feeds the device. On CPUs the cores are split among workers:
        several single-threaded forward passes side by side get more images through than one
        pass spread over every core (small convolutions parallelise poorly), at some cost in
        the latency of a lone request. TensorRT contexts are not shared between threads.
        With several processes, each plans for its share of the cores.
        """
        cores = max(1, available_cores() // self.processes)
        backend = backend or self.backend or "torch"
        gpu = backend == "tensorrt" or self.device == "cuda"
        if self.device == "auto" and backend == "torch":
            import torch  # only here: the answer depends on this machine's CUDA

            gpu = torch.cuda.is_available()
        auto = max(1, cores // _CPU_THREADS_PER_WORKER)
        workers = 1 if gpu else self.inference_workers or auto
        threads = self.threads or max(1, cores // workers)
        return workers, threads


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
