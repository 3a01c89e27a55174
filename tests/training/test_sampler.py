"""The training batch stream: deterministic, resumable mid-epoch, disjoint across ranks."""

from __future__ import annotations

import itertools

import pytest

from ccnet.training.sampler import SeededBatchSampler, augmentation_seed


def _take(sampler: SeededBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def test_same_seed_same_stream_and_different_seed_differs() -> None:
    a = _take(SeededBatchSampler(10, 3, seed=1), 7)
    assert a == _take(SeededBatchSampler(10, 3, seed=1), 7)
    assert a != _take(SeededBatchSampler(10, 3, seed=2), 7)


def test_resuming_at_a_batch_continues_the_same_stream() -> None:
    full = _take(SeededBatchSampler(10, 3, seed=5), 9)  # crosses epochs (3 batches each)
    resumed = _take(SeededBatchSampler(10, 3, seed=5, start_batch=4), 5)
    assert resumed == full[4:]


def test_each_epoch_is_a_permutation_with_fresh_augmentation_seeds() -> None:
    batches = _take(SeededBatchSampler(6, 2, seed=0), 6)  # two epochs of three batches
    first = [i for batch in batches[:3] for i, _ in batch]
    second = [i for batch in batches[3:] for i, _ in batch]
    assert sorted(first) == sorted(second) == list(range(6))
    assert first != second
    seeds = {s for batch in batches for _, s in batch}
    assert len(seeds) == 12
    assert batches[0][0][1] == augmentation_seed(0, 0, batches[0][0][0])


def test_ranks_split_each_global_batch() -> None:
    ranks = [_take(SeededBatchSampler(12, 2, seed=3, rank=r, world_size=3), 4) for r in range(3)]
    single = _take(SeededBatchSampler(12, 6, seed=3), 4)
    for step in range(4):
        together = [pair for r in range(3) for pair in ranks[r][step]]
        assert together == single[step]


def test_too_small_data_set_is_reported() -> None:
    with pytest.raises(ValueError, match="fewer than one global batch"):
        SeededBatchSampler(3, 2, seed=0, world_size=2)
