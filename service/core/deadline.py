"""One deadline per request, shared by every stage that works on it.

The clock starts when the upload has arrived; decoding, waiting in a queue, inference and
encoding all draw on the same ``request_timeout_s``. Work queues check ``expired`` before they
start an item, so a request that has already been answered 503 ``timeout`` costs no inference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["Deadline", "DeadlineExceededError"]


class DeadlineExceededError(TimeoutError):
    """The request's deadline passed before this piece of work started or finished."""


@dataclass(frozen=True)
class Deadline:
    """An absolute point on the monotonic clock."""

    seconds: float  # the budget it was made with, for messages
    at: float  # time.monotonic() when it passes

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def check(self) -> None:
        """Raise ``DeadlineExceededError`` if the deadline has passed."""
        if self.expired:
            raise DeadlineExceededError(f"the request's {self.seconds:g} s deadline has passed")
