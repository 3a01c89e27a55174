"""uvicorn's h11 protocol with the connection limits uvicorn lacks.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) but has no timeout for a
request's headers or body: a client sending its headers at one byte a second, a body at five
bytes a second, or nothing at all keeps its connection (and file descriptor) forever, and
twenty thousand of them stop the server. This subclass of ``H11Protocol``, which ``ccnet
serve`` passes to uvicorn as ``http=``, adds:

* a **header timeout**: a request's line and headers must be complete within
  ``header_timeout_s`` of its first byte (of the connection's opening, for the first request);
* a **body timeout**: while a body streams, every ``body_timeout_s`` window must bring at least
  ``min_body_rate`` bytes per second (a stalled or trickling upload is cut; a window in which
  the *server* paused reading does not count against the client);
* a **connection cap**: at ``max_connections`` open connections a new one closes the one that
  has been idle longest (no request in flight; connections that never completed a request go
  before kept-alive clients), or, with none idle, is answered 503 and closed, so a flood of
  idle connections cannot lock out /healthz;
* malformed HTTP answered with the service's JSON error body instead of uvicorn's plain text.

Why a protocol subclass rather than another server or a guard: the timeouts must act before a
request exists (an ASGI middleware never sees a request whose headers never finish), uvicorn
is already the server (``--workers``, lifespan, graceful shutdown), and hypercorn, which has
read timeouts, would change the whole serving stack for one feature. The subclass overrides
four hooks of a public class and keeps uvicorn's own request handling.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

__all__ = ["ConnectionLimits", "GuardedH11Protocol"]

log = logging.getLogger("ccnet.service.connections")


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds on one connection's time and on their number."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    min_body_rate: int = 1024  # bytes per second, averaged over each body window
    max_connections: int = 1024

    @classmethod
    def from_settings(cls) -> ConnectionLimits:
        from ccnet.service.core.config import get_settings

        settings = get_settings()
        return cls(
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.min_body_rate,
            settings.max_connections,
        )


def _error_bytes(status: int, reason: str, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\nx-error-code: {code}\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return head.encode("ascii") + b"\r\n" + body


class GuardedH11Protocol(H11Protocol):
    """``H11Protocol`` with header/body timeouts, a connection cap and JSON 4xx (see module)."""

    limits: ClassVar[ConnectionLimits | None] = None  # None: read CCNET_* settings once
    _from_env: ClassVar[ConnectionLimits | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = self._resolve_limits()
        pools = getattr(server_state, "ccnet_idle", None)
        if pools is None:
            pools = (OrderedDict(), OrderedDict())
            server_state.ccnet_idle = pools  # type: ignore[attr-defined]
        # connections with no request in flight, least recently active first: those that have
        # not completed a request yet are evicted before kept-alive ones that have
        self._fresh: OrderedDict[GuardedH11Protocol, None] = pools[0]
        self._kept: OrderedDict[GuardedH11Protocol, None] = pools[1]
        self._idle = self._fresh
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._window_bytes = 0

    @classmethod
    def _resolve_limits(cls) -> ConnectionLimits:
        if cls.limits is not None:
            return cls.limits
        if GuardedH11Protocol._from_env is None:
            GuardedH11Protocol._from_env = ConnectionLimits.from_settings()
        return GuardedH11Protocol._from_env

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._limits.max_connections and not self._evict_one():
            log.warning("connection refused: %d connections open", len(self.connections))
            transport.write(
                _error_bytes(
                    503, "Service Unavailable", "too_many_connections", "too many open connections"
                )
            )
            transport.close()
            self.transport = transport
            return
        super().connection_made(transport)
        self._idle[self] = None
        self._header_timer = self.loop.call_later(
            self._limits.header_timeout_s, self._header_timeout
        )

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._header_timer is None:
            # the first byte of a new request on a kept-alive connection starts its clock
            self._header_timer = self.loop.call_later(
                self._limits.header_timeout_s, self._header_timeout
            )
        self._window_bytes += len(data)
        if self in self._idle:
            self._idle.move_to_end(self)
        super().data_received(data)
        self._track_state()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._idle.pop(self, None)
        self._kept.pop(self, None)
        if self.flow is None:  # refused at the cap: never set up
            return
        super().connection_lost(exc)

    # ------------------------------------------------------------------ uvicorn hooks
    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._cancel_timers()
        if not self.transport.is_closing():
            self._idle = self._kept
            self._idle[self] = None

    def send_400_response(self, msg: str) -> None:
        """Malformed HTTP (h11 could not parse the request): the JSON error body, when no
        response has started; otherwise the connection is just closed."""
        log.info("malformed HTTP request: %s", msg)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and (
            self.cycle is None or not self.cycle.response_started
        ):
            self.transport.write(
                _error_bytes(400, "Bad Request", "bad_request", f"malformed HTTP request: {msg}")
            )
        if self.cycle is not None:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    # ------------------------------------------------------------------ limits
    def _track_state(self) -> None:
        their = self.conn.their_state
        if their is h11.IDLE:
            return
        self._idle.pop(self, None)  # a request is in flight
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if their is h11.SEND_BODY:
            if self._body_timer is None:
                self._window_bytes = 0
                self._body_timer = self.loop.call_later(
                    self._limits.body_timeout_s, self._body_window
                )
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.info(
            "closing a connection: request headers not complete within %g s",
            self._limits.header_timeout_s,
        )
        if self.conn.our_state is h11.IDLE:
            self.transport.write(
                _error_bytes(
                    408,
                    "Request Timeout",
                    "request_timeout",
                    "the request headers did not arrive within "
                    f"{self._limits.header_timeout_s:g} s",
                )
            )
        self.transport.close()

    def _body_window(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        window = self._limits.body_timeout_s
        if not self.flow.read_paused and self._window_bytes < self._limits.min_body_rate * window:
            log.info(
                "closing a connection: the body brought %d bytes in %g s",
                self._window_bytes,
                window,
            )
            self.transport.close()  # the app sees a client disconnect
            return
        self._window_bytes = 0
        self._body_timer = self.loop.call_later(window, self._body_window)

    def _evict_one(self) -> bool:
        """Close the longest-idle connection to make room; False when none is idle."""
        for pool in (self._fresh, self._kept):
            while pool:
                victim, _ = pool.popitem(last=False)
                if not victim.transport.is_closing():
                    victim._cancel_timers()
                    victim.transport.close()
                    return True
        return False
