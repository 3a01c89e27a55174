"""What live sessions share: the cap on their number, worker threads, metrics and SIGTERM.

One hub per app (``AppState.streams``). Sessions take a slot before anything else, so the
cap answers at once past its limit, without touching a model. SIGTERM: the hub's handler runs
before uvicorn's (chained), tells every session to close with 1001 "going away" and a reason,
then hands the signal on; uvicorn's own shutdown would only send a bare 1012.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from ccnet.service.live.limits import StreamLimits
from ccnet.service.live.metrics import StreamMetrics

__all__ = ["SessionHub"]

log = logging.getLogger("ccnet.service.live")
_GOING_AWAY_WAIT_S = 3.0  # how long SIGTERM waits for sessions to say goodbye


class _Closable(Protocol):
    def going_away(self, reason: str) -> None: ...

    async def closed(self) -> None: ...


class SessionHub:
    """Open sessions and the resources they share (thread-safe slot counting).

    Args:
        limits: the sessions' bounds.
        registry: the service's Prometheus registry.
        workers: threads that run the sessions' model steps and encoding.
    """

    def __init__(self, limits: StreamLimits, registry: CollectorRegistry, workers: int) -> None:
        self.limits = limits
        self.metrics = StreamMetrics(registry)
        self.executor = ThreadPoolExecutor(max(1, workers), thread_name_prefix="stream")
        self._sessions: set[_Closable] = set()
        self._slots = 0
        self._lock = threading.Lock()
        self._stopping: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    @property
    def open(self) -> int:
        with self._lock:
            return self._slots

    @property
    def stopping(self) -> str | None:
        """The reason the server is going away, once it is."""
        return self._stopping

    def take_slot(self) -> bool:
        """One more session, if the cap allows (False at the cap)."""
        with self._lock:
            if self._slots >= self.limits.max_sessions or self._stopping:
                return False
            self._slots += 1
            return True

    def give_slot(self) -> None:
        with self._lock:
            self._slots -= 1

    def add(self, session: _Closable) -> None:
        self._sessions.add(session)
        self._install_sigterm()

    def discard(self, session: _Closable) -> None:
        self._sessions.discard(session)

    async def going_away(self, reason: str) -> None:
        """Close every session with 1001 and ``reason``; wait (bounded) for them to finish."""
        self._stopping = reason
        sessions = list(self._sessions)
        for session in sessions:
            session.going_away(reason)
        if sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(s.closed() for s in sessions), return_exceptions=True),
                    _GOING_AWAY_WAIT_S,
                )

    def _install_sigterm(self) -> None:
        """Chain a SIGTERM handler before uvicorn's, once, from the event loop's thread
        (signal handlers can only be set from the main thread; test clients run the app in
        another one, where this does nothing)."""
        if self._loop is not None or threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        loop, previous = self._loop, self._previous
        assert loop is not None

        async def say_goodbye() -> None:
            try:
                await self.going_away("the server is shutting down")
            finally:
                _hand_on(previous, signum, frame)

        log.info("SIGTERM: closing %d live sessions", len(self._sessions))
        loop.create_task(say_goodbye())

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _hand_on(previous: Callable[..., Any] | int | None, signum: int, frame: Any) -> None:
    """Run the handler that was there before ours (uvicorn's), or the default action."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
