"""Intra-op threads per forward pass, decided from the load when the pass starts.

On a CPU two single-threaded passes side by side get more images through than one pass
spread over both cores (small convolutions parallelise poorly), so under load every pass
gets one core. A lone request, though, would then leave the other cores idle and wait
longer than a naive one-request-one-forward server that uses every core. The policy gives a
pass ``cores // (passes running + requests waiting)`` threads: every core for a lone request,
one core each under load.

The backends ask the policy at the start of each ``infer`` (``with policy.slot() as n``) and
apply ``n`` in their own way (PyTorch: the calling thread's OpenMP thread count, which is
per thread; ONNX Runtime: a session built for that many threads). The service tells the
policy how many requests wait with ``bind_backlog`` (the batcher's queue depth), so that a
pass started while others queue does not take every core just before they start.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

__all__ = ["ThreadPolicy"]


class ThreadPolicy:
    """Shares ``cores`` among the forward passes of one model.

    Args:
        cores: the cores this process may use for this model's passes.
        fixed: an operator's explicit thread count (``CCNET_THREADS``): always that many.
    """

    def __init__(self, cores: int, fixed: int = 0) -> None:
        if cores < 1 or fixed < 0:
            raise ValueError(f"cores must be >= 1 and fixed >= 0, got {cores}, {fixed}")
        self.cores = cores
        self.fixed = fixed
        self._active = 0
        self._lock = threading.Lock()
        self._backlog: Callable[[], int] = lambda: 0

    @property
    def widths(self) -> tuple[int, ...]:
        """Every thread count ``slot`` can hand out (ONNX Runtime builds a session each)."""
        if self.fixed:
            return (self.fixed,)
        return tuple(sorted({max(1, self.cores // share) for share in range(1, self.cores + 1)}))

    def bind_backlog(self, backlog: Callable[[], int]) -> None:
        """Where the requests waiting for this model are counted (the batcher's depth)."""
        self._backlog = backlog

    def threads_for(self, running: int, waiting: int) -> int:
        """Threads for a pass when ``running`` passes (this one included) run and
        ``waiting`` requests queue."""
        if self.fixed:
            return self.fixed
        return max(1, self.cores // max(1, running + waiting))

    @contextlib.contextmanager
    def slot(self) -> Iterator[int]:
        """Count one pass as running for the ``with`` block; yields its thread count."""
        with self._lock:
            self._active += 1
            running = self._active
        try:
            try:
                waiting = int(self._backlog())
            except Exception:  # a closed batcher: count nobody waiting
                waiting = 0
            yield self.threads_for(running, waiting)
        finally:
            with self._lock:
                self._active -= 1
