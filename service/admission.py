"""Admission by cost: requests hold bytes of a shared memory budget while they work.

Counting requests bounds nothing when one request can cost 100 times another (a 64×64 PNG
and a 6320×6320 overlay). Every request therefore reserves what it may cost, as computed from
its headers and the settings (``service.costs``), before the work starts; a reservation that
does not fit is refused at once (503 ``overloaded``), and one larger than the whole budget can
never run (413). A reservation is returned when the request is answered *and* every thread
still working for it has finished: a request answered 503 ``timeout`` while its decoder runs
on keeps its bytes until the decoder is done, so the budget tracks memory, not answers.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

__all__ = ["MemoryBudget", "OverBudgetError", "Reservation"]


class OverBudgetError(RuntimeError):
    """The budget cannot hold this reservation now (``fits_ever`` says whether it ever can)."""

    def __init__(self, message: str, *, fits_ever: bool) -> None:
        super().__init__(message)
        self.fits_ever = fits_ever


class MemoryBudget:
    """A pool of bytes shared by the requests in flight (thread-safe).

    Args:
        capacity: bytes that may be reserved at once.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        with self._lock:
            return self._used

    def reserve(self, nbytes: int, what: str = "the request") -> Reservation:
        """A new reservation of ``nbytes``; ``OverBudgetError`` if it does not fit now."""
        reservation = Reservation(self)
        reservation.grow(nbytes, what)
        return reservation

    def _take(self, nbytes: int, what: str) -> None:
        if nbytes > self.capacity:
            raise OverBudgetError(
                f"{what} needs {_mib(nbytes)} of memory, more than the server's whole budget "
                f"of {_mib(self.capacity)} (CCNET_MEMORY_BUDGET_MB)",
                fits_ever=False,
            )
        with self._lock:
            if self._used + nbytes > self.capacity:
                raise OverBudgetError(
                    f"{what} needs {_mib(nbytes)} of memory and "
                    f"{_mib(self.capacity - self._used)} of the budget is free",
                    fits_ever=True,
                )
            self._used += nbytes

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes


class Reservation:
    """Bytes held for one request; grows while the upload streams in, returned once."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._lock = threading.Lock()
        self.nbytes = 0
        self._holders = 1  # the request itself, until ``release``
        self._released = False

    def grow(self, nbytes: int, what: str = "the request") -> None:
        """Hold ``nbytes`` more (``OverBudgetError`` if they do not fit)."""
        if nbytes <= 0:
            return
        # a request's total is checked against the capacity, not just the increment
        if self.nbytes + nbytes > self._budget.capacity:
            raise OverBudgetError(
                f"{what} needs more than {_mib(self.nbytes + nbytes)} of memory, more than the "
                f"server's whole budget of {_mib(self._budget.capacity)} "
                "(CCNET_MEMORY_BUDGET_MB)",
                fits_ever=False,
            )
        self._budget._take(nbytes, what)
        with self._lock:
            self.nbytes += nbytes

    def hold_until_done(self, future: Future[Any]) -> None:
        """Keep the bytes reserved until ``future`` (work for this request) has finished."""
        with self._lock:
            self._holders += 1
        future.add_done_callback(lambda _: self._drop())

    def release(self) -> None:
        """The request is answered; the bytes return once no work for it is running."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._drop()

    def _drop(self) -> None:
        with self._lock:
            self._holders -= 1
            give = self.nbytes if self._holders == 0 else 0
            if give:
                self.nbytes = 0
        if give:
            self._budget._give(give)


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"
