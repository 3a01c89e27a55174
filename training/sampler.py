"""A deterministic, resumable stream of training batches.

Why not ``DistributedSampler`` + ``shuffle``: resuming mid-epoch there replays the epoch from
its start, and augmentation draws from worker RNGs whose state depends on timing. Here batch
number ``b`` is a pure function of (seed, b, rank): epoch ``b // batches_per_epoch`` shuffles
all sample indices with a generator seeded by (seed, epoch); each global batch is split across
ranks; every index carries its own augmentation seed derived from (seed, epoch, index). A run
resumed at step ``s`` starts the stream at batch ``s × accumulate`` and sees exactly the
samples, in the same order and with the same augmentation, that an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["SeededBatchSampler", "augmentation_seed"]


def _mix(*values: int) -> int:
    """A 63-bit seed, well mixed from non-negative ints (fits ``Generator.manual_seed``)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> 1)


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s augmentation in ``epoch``."""
    return _mix(seed, epoch, index, 0)


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``(index, augmentation seed)`` for one rank.

    Each epoch uses ``num_samples // (batch_size × world_size)`` full global batches (the rest
    of the permutation is dropped, as with ``drop_last``).

    Args:
        num_samples: size of the dataset.
        batch_size: samples per batch on this rank.
        seed: the run's seed.
        rank: this process's rank.
        world_size: number of processes.
        start_batch: index of the first batch to yield (resume point).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        global_batch = batch_size * world_size
        if num_samples < global_batch:
            raise ValueError(
                f"the data set has {num_samples} training samples, fewer than one global batch "
                f"({batch_size} × {world_size} processes); lower --batch-size"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.batches_per_epoch = num_samples // global_batch

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch, 0, 1))
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = self.start_batch
        epoch, permutation = -1, torch.empty(0, dtype=torch.long)
        global_batch = self.batch_size * self.world_size
        while True:
            batch_epoch, position = divmod(batch, self.batches_per_epoch)
            if batch_epoch != epoch:
                epoch, permutation = batch_epoch, self._permutation(batch_epoch)
            start = position * global_batch + self.rank * self.batch_size
            indices = permutation[start : start + self.batch_size].tolist()
            yield [(i, augmentation_seed(self.seed, epoch, i)) for i in indices]
            batch += 1
