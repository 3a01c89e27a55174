"""Process-group plumbing for multi-GPU / multi-node training under ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; a plain
``python`` / ``ccnet train`` start has none of them and runs as a single process, with every
helper below reducing to a no-op. NCCL serves CUDA, gloo the CPU (which is also how the test
suite runs two processes on one machine).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistributedContext",
    "all_gather_objects",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "setup",
    "teardown",
    "wrap",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        index = local_rank if preference == "cuda" else torch.device(preference).index
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if preference != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {preference!r}")
    return torch.device("cpu")


def setup(device: str = "auto", backend: str | None = None) -> DistributedContext:
    """Join the process group if started by ``torchrun``, and choose the device.

    Args:
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda`` (this process's local GPU) or
            ``cuda:N``.
        backend: process-group backend; default NCCL on CUDA, gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if chosen.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, chosen)


def teardown() -> None:
    """Leave the process group (if any) so the next run in this process starts clean."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over processes, in place (a no-op in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable plain data), in rank order."""
    if not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def all_reduce_max(value: int, device: torch.device) -> int:
    """The largest ``value`` over processes (``value`` itself in a single process)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def _restride_like(param: Tensor) -> Callable[[Tensor], Tensor]:
    def hook(grad: Tensor) -> Tensor:
        if grad.stride() == param.stride() or not (grad.is_contiguous() and param.is_contiguous()):
            return grad
        return grad.as_strided(param.shape, param.stride())  # same memory, other unit strides

    return hook


def wrap(module: nn.Module, ctx: DistributedContext) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when this is a multi-process run, else itself.

    Why the gradient hooks: the fast criss-cross attention's backward (``model.axial``) hands
    its q/k/v gradients back channels-last, so the 1×1 projection convolutions produce weight
    gradients whose size-1 axes carry channels-last strides — ``(C, 1, C, C)`` instead of the
    parameter's ``(C, 1, 1, 1)``. The bytes are laid out identically (a 1×1 kernel has one
    order), but DDP compares strides literally, warns "Grad strides do not match bucket view
    strides" and copies each such gradient into its bucket. Each 1×1 parameter's gradient is
    therefore re-viewed with the parameter's own strides as it is produced: no copy, no change
    in value, and the buckets match.
    """
    if not ctx.distributed:
        return module
    for param in module.parameters():
        if param.requires_grad and param.dim() > 2 and all(s == 1 for s in param.shape[2:]):
            param.register_hook(_restride_like(param))
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)
