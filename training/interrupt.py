"""SIGTERM / SIGINT during training: finish the step, write a checkpoint, then stop.

A scheduler's preemption (SIGTERM), ``docker stop``, ``kill`` or Ctrl-C would otherwise end
the process wherever it is and lose every step since the last ``--checkpoint-every``. While a
``StopRequest`` is active, the first such signal only sets a flag; the loop checks it after
each optimiser step, writes a resumable checkpoint at that step and raises ``Interrupted``,
so ``--resume`` continues exactly. A second signal gives up waiting and raises
``KeyboardInterrupt`` at once (the last committed checkpoint stays valid: commits are atomic).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

__all__ = ["Interrupted", "StopRequest", "ignore_interrupts"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):  # noqa: N818 - a stop the user asked for, not an error
    """A run stopped on a signal after writing its checkpoint.

    Args:
        signum: the signal received.
        iteration: the step the checkpoint holds.
        folder: the checkpoint's folder.
    """

    def __init__(self, signum: int, iteration: int, folder: str) -> None:
        self.signum = signum
        self.iteration = iteration
        self.folder = folder
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {iteration}; checkpoint {folder} (continue with "
            "--resume)"
        )

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class StopRequest:
    """Context manager that turns SIGTERM and SIGINT into ``self.signum`` (module docstring).

    Outside the main thread (signal handlers cannot be installed there) it does nothing and
    signals keep their usual effect.
    """

    def __init__(self, announce: bool = True) -> None:
        self.signum: int | None = None
        self._announce = announce
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: stop waiting for the step
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        if self._announce:
            print(
                f"\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint "
                "(signal again to abort)",
                file=sys.stderr,
                flush=True,
            )


def ignore_interrupts(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group, and a worker it
    killed would fail the main process's next fetch before the checkpoint; the main process
    decides when to stop, and the workers end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
