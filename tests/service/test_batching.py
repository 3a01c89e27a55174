"""Micro-batching and the bounded clip executor, without HTTP."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ccnet.inference.options import available_cores
from ccnet.service.batching import BoundedExecutor, MicroBatcher, OverloadedError
from ccnet.service.core.config import Settings
from ccnet.service.core.deadline import Deadline, DeadlineExceededError
from ccnet.service.stats import InferenceStatistics


def _double(batch: np.ndarray) -> np.ndarray:
    return batch * 2


def test_results_match_their_requests_and_shapes_are_grouped() -> None:
    seen: list[tuple[int, ...]] = []

    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return batch * 2

    gate, entered = threading.Event(), threading.Event()

    def held(batch: np.ndarray) -> np.ndarray:
        entered.set()
        gate.wait(5)
        return run(batch)

    batcher = MicroBatcher(held, max_batch_size=8, max_wait_ms=50)
    try:
        first = batcher.submit(np.zeros((3, 8, 8), np.float32))  # occupies the worker
        assert entered.wait(5)
        inputs = [np.full((3, 8, 8), i, np.float32) for i in range(5)]
        inputs += [np.full((3, 16, 8), i, np.float32) for i in range(3)]
        futures = [batcher.submit(x) for x in inputs]
        gate.set()
        for x, future in zip(inputs, futures, strict=True):
            result = future.result(timeout=10)
            np.testing.assert_array_equal(result.output, x * 2)
        assert first.result(timeout=10).batch_size == 1
    finally:
        batcher.close()
    # after the first lone batch: the 5 small and the 3 tall inputs each ran as one batch
    assert sorted(seen[1:]) == [(3, 3, 16, 8), (5, 3, 8, 8)]


def test_batches_never_exceed_the_maximum() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def run(batch: np.ndarray) -> np.ndarray:
        gate.wait(5)
        sizes.append(len(batch))
        return batch

    batcher = MicroBatcher(run, max_batch_size=3, max_wait_ms=20, queue_size=64)
    try:
        futures = [batcher.submit(np.zeros(2, np.float32)) for _ in range(10)]
        gate.set()
        for future in futures:
            future.result(timeout=10)
    finally:
        batcher.close()
    assert sum(sizes) == 10 and max(sizes) <= 3


def test_full_queue_raises_overloaded() -> None:
    gate, entered = threading.Event(), threading.Event()

    def held(batch: np.ndarray) -> np.ndarray:
        entered.set()
        gate.wait(5)
        return batch

    batcher = MicroBatcher(held, max_batch_size=1, max_wait_ms=0, queue_size=2)
    try:
        running = batcher.submit(np.zeros(1))
        assert entered.wait(5)  # the worker has taken it
        waiting = [batcher.submit(np.zeros(1)) for _ in range(2)]
        assert not batcher.has_room()
        with pytest.raises(OverloadedError):
            batcher.submit(np.zeros(1))
        gate.set()
        for future in (running, *waiting):
            future.result(timeout=10)
        assert batcher.has_room()
    finally:
        gate.set()
        batcher.close()


def test_a_failing_batch_fails_its_requests_and_the_worker_lives_on() -> None:
    calls = {"n": 0}

    def run(batch: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return batch

    batcher = MicroBatcher(run, max_batch_size=1, max_wait_ms=0)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit(np.zeros(1)).result(timeout=10)
        assert batcher.submit(np.ones(1)).result(timeout=10).output[0] == 1
    finally:
        batcher.close()


def test_cancelled_requests_are_not_computed() -> None:
    gate, entered = threading.Event(), threading.Event()
    computed: list[float] = []

    def run(batch: np.ndarray) -> np.ndarray:
        entered.set()
        gate.wait(5)
        computed.extend(batch[:, 0].tolist())
        return batch

    batcher = MicroBatcher(run, max_batch_size=1, max_wait_ms=0)
    try:
        first = batcher.submit(np.zeros(1))
        assert entered.wait(5)
        abandoned = batcher.submit(np.full(1, 7.0))
        assert abandoned.cancel()  # a request that timed out while queued
        last = batcher.submit(np.full(1, 9.0))
        gate.set()
        first.result(timeout=10)
        last.result(timeout=10)
    finally:
        batcher.close()
    assert 7.0 not in computed and 9.0 in computed


def test_items_whose_deadline_passed_in_the_queue_are_dropped() -> None:
    gate, entered = threading.Event(), threading.Event()
    computed: list[float] = []

    def run(batch: np.ndarray) -> np.ndarray:
        entered.set()
        gate.wait(5)
        computed.extend(batch[:, 0].tolist())
        return batch

    batcher = MicroBatcher(run, max_batch_size=1, max_wait_ms=0)
    try:
        first = batcher.submit(np.zeros(1))
        assert entered.wait(5)
        expired = batcher.submit(np.full(1, 7.0), Deadline.after(0.01))
        alive = batcher.submit(np.full(1, 9.0), Deadline.after(30))
        threading.Event().wait(0.05)  # the first deadline passes while the worker is busy
        gate.set()
        first.result(timeout=10)
        with pytest.raises(DeadlineExceededError):
            expired.result(timeout=10)
        assert alive.result(timeout=10).output[0] == 9.0
    finally:
        batcher.close()
    assert 7.0 not in computed


def test_statistics_count_answers_failures_and_batches() -> None:
    """What /v2/models/NAME/stats reports: images answered, per batch size, and the three
    ways an image fails (a full queue, a deadline passed while queued, a forward pass that
    raised), each recorded before its caller sees the outcome."""
    gate, entered = threading.Event(), threading.Event()

    def run(batch: np.ndarray) -> np.ndarray:
        entered.set()
        gate.wait(5)
        if batch[0, 0] < 0:
            raise RuntimeError("boom")
        return batch

    statistics = InferenceStatistics()
    batcher = MicroBatcher(
        run, max_batch_size=8, max_wait_ms=50, queue_size=4, statistics=statistics
    )
    try:
        first = batcher.submit(np.zeros(1))
        assert entered.wait(5)  # the worker holds a batch of one
        expired = batcher.submit(np.full(1, 7.0), Deadline.after(0.01))
        batched = [batcher.submit(np.ones(1)) for _ in range(3)]
        with pytest.raises(OverloadedError):
            batcher.submit(np.ones(1))
        threading.Event().wait(0.05)  # the deadline passes while the worker is busy
        gate.set()
        first.result(timeout=10)
        with pytest.raises(DeadlineExceededError):
            expired.result(timeout=10)
        assert [f.result(timeout=10).batch_size for f in batched] == [3, 3, 3]
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit(np.full(1, -1.0)).result(timeout=10)
    finally:
        gate.set()
        batcher.close()
    stats = statistics.model_stats("m", "1")
    assert (stats["name"], stats["version"]) == ("m", "1")
    assert stats["inference_count"] == 4 and stats["execution_count"] == 2
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 4 and inference["fail"]["count"] == 3
    assert inference["queue"]["count"] == 4 and inference["compute_infer"]["count"] == 4
    assert inference["success"]["ns"] >= inference["queue"]["ns"] > 0
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [
        (1, 1),
        (3, 1),
    ]
    assert stats["last_inference"] > 0


def test_bounded_executor_skips_expired_jobs_and_honours_claims() -> None:
    gate = threading.Event()
    executor = BoundedExecutor(max_pending=2)
    ran: list[int] = []
    try:
        executor.claim()  # a clip holding its slot while it decodes
        busy = executor.submit(lambda: gate.wait(5))
        assert not executor.has_room()
        with pytest.raises(OverloadedError):
            executor.claim()
        late = executor.submit(lambda: ran.append(1), Deadline.after(0.01), claimed=True)
        threading.Event().wait(0.05)
        gate.set()
        busy.result(timeout=10)
        with pytest.raises(DeadlineExceededError):
            late.result(timeout=10)
        assert ran == [] and executor.depth == 0
        executor.claim()
        executor.unclaim()
        assert executor.depth == 0 and executor.has_room()
    finally:
        gate.set()
        executor.close()


def test_workers_run_batches_side_by_side() -> None:
    inside = threading.Barrier(2, timeout=5)  # passes only if two batches run at once

    def run(batch: np.ndarray) -> np.ndarray:
        inside.wait()
        return batch

    batcher = MicroBatcher(run, max_batch_size=1, max_wait_ms=0, workers=2)
    try:
        futures = [batcher.submit(np.zeros(1)) for _ in range(2)]
        for future in futures:
            future.result(timeout=10)
    finally:
        batcher.close()


def test_bounded_executor_refuses_beyond_its_backlog() -> None:
    gate = threading.Event()
    executor = BoundedExecutor(max_pending=2)
    try:
        jobs = [executor.submit(lambda: gate.wait(5)) for _ in range(2)]
        assert executor.depth == 2 and not executor.has_room()
        with pytest.raises(OverloadedError):
            executor.submit(lambda: None)
        gate.set()
        for job in jobs:
            job.result(timeout=10)
        assert executor.submit(lambda: 42).result(timeout=10) == 42
    finally:
        gate.set()
        executor.close()


def test_parallelism_defaults() -> None:
    cores = available_cores()
    assert Settings(backend="onnxruntime", device="cpu").parallelism() == (cores, 1)
    assert Settings(backend="torch", device="cpu").parallelism() == (cores, 1)
    assert Settings(backend="tensorrt").parallelism() == (1, cores)
    explicit = Settings(device="cpu", inference_workers=3, threads=2)
    assert explicit.parallelism() == (3, 2)
    assert Settings(device="cpu", inference_workers=1).parallelism() == (1, cores)
    shared = max(1, cores // 2)  # two uvicorn processes split the cores
    assert Settings(device="cpu", workers=2).parallelism() == (shared, 1)


@pytest.mark.parametrize("bad", [{"max_batch_size": 0}, {"queue_size": 0}, {"workers": 0}])
def test_bad_batcher_arguments(bad) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        MicroBatcher(_double, **bad)
