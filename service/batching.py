"""Micro-batching: concurrent image requests share one forward pass.

Requests enter a bounded queue; one worker thread per model takes the first waiting request,
gathers more for at most ``max_wait_ms`` (or until ``max_batch_size``), groups them by input
shape (images are padded to the stride, so same-sized photos share a shape) and runs each
group as one batch. When the queue is full ``submit`` fails at once with ``OverloadedError``: the
caller answers 503 + Retry-After instead of letting every request's latency grow. Each item
carries its request's deadline: one that has passed by the time a worker reaches it is
dropped (its future fails with ``DeadlineExceededError``) instead of computed, so an answered
request does not hold the queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ccnet.service.core.deadline import Deadline, DeadlineExceededError
from ccnet.service.stats import InferenceStatistics

__all__ = ["BatchResult", "BoundedExecutor", "MicroBatcher", "OverloadedError"]

log = logging.getLogger("ccnet.service.batching")


class OverloadedError(RuntimeError):
    """The queue is full; try again later."""


@dataclass(frozen=True)
class BatchResult:
    """One request's output and the forward pass that produced it."""

    output: np.ndarray
    seconds: float  # the whole batch's forward time
    batch_size: int


@dataclass
class _Item:
    pixels: np.ndarray
    deadline: Deadline | None = None
    future: Future[BatchResult] = field(default_factory=Future)
    queued_ns: int = field(default_factory=time.perf_counter_ns)

    def start(self, statistics: InferenceStatistics | None) -> bool:
        """Whether to compute this item: not cancelled and its deadline not passed."""
        if not self.future.set_running_or_notify_cancel():
            return False
        if self.deadline is not None and self.deadline.expired:
            if statistics is not None:
                statistics.record_failure(time.perf_counter_ns() - self.queued_ns)
            self.future.set_exception(DeadlineExceededError("expired while queued"))
            return False
        return True


class MicroBatcher:
    """Batches same-shaped inputs for ``run`` on one worker thread.

    Args:
        run: (B, ...) float32 → (B, ...) outputs; called only from the worker thread.
        max_batch_size: the largest batch ``run`` receives.
        max_wait_ms: how long the first request of a batch waits for company.
        queue_size: requests allowed to wait; beyond it ``submit`` raises ``OverloadedError``.
        on_batch: called with each batch size and its run time in seconds (metrics).
        statistics: receives every image's and batch's times and failures (``/v2`` stats).
        name: names the worker threads (logs, debuggers).
        workers: batches run in parallel by this many threads (``run`` must allow it). On a
            CPU, two single-threaded forward passes side by side get more images through
            than one pass split over two threads: small convolutions scale poorly.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        queue_size: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        statistics: InferenceStatistics | None = None,
        name: str = "model",
        workers: int = 1,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_wait_ms < 0 or workers < 1:
            raise ValueError(
                "max_batch_size, queue_size and workers must be >= 1, max_wait_ms >= 0"
            )
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1e3
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        self._on_batch = on_batch
        self._statistics = statistics
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch being run)."""
        return self._queue.qsize()

    def has_room(self) -> bool:
        """Whether a request submitted now would be queued (checked before decoding, so a
        request that will be refused costs next to nothing)."""
        return not self._queue.full()

    def submit(self, pixels: np.ndarray, deadline: Deadline | None = None) -> Future[BatchResult]:
        """Queue one input (without batch axis); the future holds its ``BatchResult``, or
        ``DeadlineExceededError`` when ``deadline`` passed before a worker reached it."""
        item = _Item(pixels, deadline)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if self._statistics is not None:
                self._statistics.record_failure(0)
            raise OverloadedError(f"{self._queue.maxsize} requests are already waiting") from None
        return item.future

    def close(self) -> None:
        """Stop after the queued work; waits for the workers."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        items = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(items) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                return items, True
            items.append(item)
        return items, False

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            items, stopping = self._gather(first)
            # a request that timed out while waiting is skipped, not computed
            live = [item for item in items if item.start(self._statistics)]
            groups: dict[tuple[int, ...], list[_Item]] = {}
            for item in live:
                groups.setdefault(item.pixels.shape, []).append(item)
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, group: list[_Item]) -> None:
        began = time.perf_counter_ns()
        try:
            batch = np.stack([item.pixels for item in group])
            stacked = time.perf_counter_ns()
            outputs = self._run(batch)
        except Exception as error:  # reported to every waiting request, the worker lives on
            log.exception("inference failed for a batch of %d", len(group))
            failed = time.perf_counter_ns()
            for item in group:
                if self._statistics is not None:
                    self._statistics.record_failure(failed - item.queued_ns)
                item.future.set_exception(error)
            return
        ran = time.perf_counter_ns()
        seconds = (ran - began) / 1e9
        if self._on_batch is not None:
            self._on_batch(len(group), seconds)
        results = [BatchResult(output, seconds, len(group)) for output in outputs]
        if self._statistics is not None:  # before the answers: a client reads them after
            answered = time.perf_counter_ns()
            self._statistics.record_batch(
                waited_ns=[began - item.queued_ns for item in group],
                answered_ns=[answered - item.queued_ns for item in group],
                input_ns=stacked - began,
                infer_ns=ran - stacked,
                output_ns=answered - ran,
            )
        for item, result in zip(group, results, strict=True):
            item.future.set_result(result)


class BoundedExecutor:
    """One worker thread with a bounded backlog, for jobs that do not batch (clips).

    Args:
        max_pending: jobs allowed to wait or run; beyond it ``submit`` raises ``OverloadedError``.
        name: names the worker thread.
    """

    def __init__(self, max_pending: int, name: str = "model") -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clips-{name}")

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        with self._lock:
            return self._pending

    def has_room(self) -> bool:
        """Whether a job submitted now would be accepted."""
        with self._lock:
            return self._pending < self._max_pending

    def claim(self) -> None:
        """Take a backlog slot now, for a job that will be submitted later (``claimed=True``):
        clips claim theirs before they are decoded. ``OverloadedError`` when none is free;
        ``unclaim`` gives it back when the job will not be submitted after all."""
        if not self._slots.acquire(blocking=False):
            raise OverloadedError("the clip queue is full")
        with self._lock:
            self._pending += 1

    def unclaim(self) -> None:
        """Return a slot taken by ``claim`` whose job was never submitted."""
        with self._lock:
            self._pending -= 1
        self._slots.release()

    def submit(
        self, job: Callable[[], Any], deadline: Deadline | None = None, *, claimed: bool = False
    ) -> Future[Any]:
        """Run ``job`` on the worker; ``OverloadedError`` when the backlog is full (unless a
        slot was ``claim``ed for it). A job whose ``deadline`` has passed when the worker
        reaches it fails with ``DeadlineExceededError`` without running."""
        if not claimed:
            self.claim()

        def release(_: Future[Any]) -> None:
            self.unclaim()

        def run() -> Any:
            if deadline is not None:
                deadline.check()
            return job()

        future = self._executor.submit(run)
        future.add_done_callback(release)
        return future

    def close(self) -> None:
        """Finish queued jobs and stop the worker."""
        self._executor.shutdown(wait=True, cancel_futures=True)
