"""One live session: frames in, masks out, every buffer bounded, one client never stalls others.

Three loops share the socket (``run``):

- the **receiver** reads every message as it arrives: a binary message is a frame, numbered in
  arrival order and put on the input queue; past ``queue_frames`` waiting frames the *oldest*
  waiting one is dropped and reported as skipped (latest wins). ``{"type": "end"}`` stops
  intake. Nothing from the client for ``idle_timeout_s`` closes the session.
- the **worker** takes the oldest waiting frame, decodes it and pushes it through the
  ``StreamSegmenter`` on the hub's threads, renders what comes back, and waits while
  ``max_unsent`` answers are not yet sent: a client that does not read stops the worker,
  never grows a buffer; its new frames are skipped instead.
- the **sender** writes answers in order: the ``skipped`` and per-frame error notices first
  (they are small and already decided), then each mask as a JSON text message and its
  PNG/JPEG binary message.

Window rule (``inference.stream``): a skipped frame never enters the temporal window; the
window is the last T processed frames, whatever their gaps.

Closing: after ``end`` the queued frames are processed, the frames held for lookahead are
flushed, ``{"type": "end", ...}`` is sent with the counts and the socket closes 1000. A fatal
problem sends ``{"type": "error", code, message}`` then the close code of ``CLOSE_CODES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ccnet.inference.codecs import ImageDecodeError, ImageTooLargeError, decode_image
from ccnet.inference.stream import StreamMask, StreamSegmenter
from ccnet.service.live.hub import SessionHub
from ccnet.service.live.limits import StreamLimits, StreamOptions

__all__ = ["CLOSE_CODES", "LiveSession", "SessionEndError"]

log = logging.getLogger("ccnet.service.live")

# RFC 6455 close codes by error code
CLOSE_CODES = {
    "unauthorized": 1008,  # policy violation
    "forbidden_origin": 1008,
    "validation_error": 1008,
    "unknown_model": 1008,
    "bad_message": 1008,
    "payload_too_large": 1009,  # message too big
    "too_many_invalid_frames": 1003,  # unsupported data
    "overloaded": 1013,  # try again later
    "unavailable": 1013,
    "idle_timeout": 1001,  # going away: the server drops an idle peer
    "going_away": 1001,
    "internal_error": 1011,
}
_SEND_GRACE_S = 2.0  # a last error or end message to a client that does not read


class SessionEndError(Exception):
    """Ends the session with an error message and a close code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Frame:
    index: int
    data: bytes
    received: float  # perf_counter at receipt


@dataclass
class _Answer:
    header: dict[str, Any]
    payload: bytes


@dataclass
class _Counts:
    received: int = 0
    processed: int = 0
    skipped: int = 0
    invalid: int = 0
    bad_in_a_row: int = 0
    notes: list[dict[str, Any]] = field(default_factory=list)  # errors not sent yet
    skipped_unsent: list[int] = field(default_factory=list)


class LiveSession:
    """One accepted WebSocket and its ``StreamSegmenter`` (module docstring).

    Args:
        socket: the accepted WebSocket.
        segmenter: this session's own incremental segmenter.
        model: the model's name (metrics labels, messages).
        limits: the bounds.
        options: the query options.
        hub: shared threads and metrics.
        render: (rgb or None, mask) -> (encoded bytes, format); runs on the hub's threads.
    """

    def __init__(
        self,
        socket: WebSocket,
        segmenter: StreamSegmenter,
        model: str,
        limits: StreamLimits,
        options: StreamOptions,
        hub: SessionHub,
        render: Callable[[np.ndarray | None, np.ndarray], tuple[bytes, str]],
    ) -> None:
        self.socket = socket
        self.segmenter = segmenter
        self.model = model
        self.limits = limits
        self.options = options
        self.hub = hub
        self.render = render
        self.counts = _Counts()
        self._queue: deque[_Frame] = deque()
        self._out: deque[_Answer] = deque()
        self._changed = asyncio.Condition()
        self._intake_done = False  # end received (or intake stopped by a limit)
        self._finished = False  # the worker answered everything: the end message may go
        self._end_reason = "end"
        self._fatal: SessionEndError | None = None
        self._done = asyncio.Event()
        self._work: asyncio.Future[Any] | None = None  # the step running on a hub thread
        self._received_at: dict[int, float] = {}
        self._kept_rgb: dict[int, np.ndarray] = {}  # lookahead overlays: frames not answered
        self._metrics = hub.metrics
        self._watchdog: asyncio.Task[None] | None = None  # ends a session whose goodbye hangs
        # the close code and reason, sent last, once every task of the session has stopped
        self._close: tuple[int, str] | None = None

    # ---------------------------------------------------------------- public

    async def run(self) -> str:
        """Serve the session to its end; returns why it ended (metrics label)."""
        began = time.monotonic()
        tasks = [
            asyncio.create_task(self._receive(began), name="stream-receive"),
            asyncio.create_task(self._worker(), name="stream-work"),
            asyncio.create_task(self._sender(), name="stream-send"),
        ]
        reason = "end"
        try:
            await self._done.wait()
        finally:
            if self._watchdog is not None:
                tasks.append(self._watchdog)
            for task in tasks:
                task.cancel()
            # wait, not gather: a cancel of this task landing here (the server stopping, a
            # test client leaving) must surface as that cancel, with its own message; gather
            # would raise the children's earlier, anonymous CancelledError instead, which the
            # canceller's scope does not recognise as its own and lets escape
            await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled():
                    task.exception()  # retrieved: the tasks report their own failures
            # the queue's gauge first: a cancelled session (the server stopping) must not
            # leave its frames counted while it waits for the thread below
            self._metrics.queue_depth.labels(self.model).dec(len(self._queue))
            self._queue.clear()
            if self._work is not None:  # the thread finishes its step before memory returns
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._work)
            if self._fatal is not None:
                reason = self._fatal.code
            elif self._end_reason == "disconnect":
                reason = "disconnect"
            if (
                self._close is not None
                and self.socket.application_state == WebSocketState.CONNECTED
            ):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.socket.close(*self._close), _SEND_GRACE_S)
        return reason

    def going_away(self, reason: str) -> None:
        """SIGTERM: close with 1001 and ``reason`` (called on the event loop)."""
        self._fail(SessionEndError("going_away", reason))

    async def closed(self) -> None:
        await self._done.wait()

    # ---------------------------------------------------------------- receiving

    async def _receive(self, began: float) -> None:
        limits = self.limits
        try:
            while not self._intake_done:
                left = limits.max_duration_s - (time.monotonic() - began)
                if left <= 0:
                    await self._stop_intake("max_duration")
                    return
                try:
                    message = await asyncio.wait_for(
                        self.socket.receive(), min(limits.idle_timeout_s, left)
                    )
                except TimeoutError:
                    if time.monotonic() - began >= limits.max_duration_s:
                        await self._stop_intake("max_duration")
                        return
                    raise SessionEndError(
                        "idle_timeout",
                        f"nothing received for {limits.idle_timeout_s:g} s; the session is closed",
                    ) from None
                if message["type"] == "websocket.disconnect":
                    self._end_reason = "disconnect"
                    self._done.set()
                    return
                if message.get("bytes") is not None:
                    await self._on_frame(message["bytes"])
                elif message.get("text") is not None:
                    await self._on_control(message["text"])
        except SessionEndError as end:
            self._fail(end)
        except WebSocketDisconnect:
            self._end_reason = "disconnect"
            self._done.set()

    async def _on_frame(self, data: bytes) -> None:
        if len(data) > self.limits.max_frame_bytes:
            raise SessionEndError(
                "payload_too_large",
                f"a frame of {len(data)} bytes is over the limit of "
                f"{self.limits.max_frame_bytes} (CCNET_STREAM_MAX_FRAME_BYTES)",
            )
        counts = self.counts
        index = counts.received
        counts.received += 1
        self._metrics.frames.labels(self.model, "received").inc()
        async with self._changed:
            self._queue.append(_Frame(index, data, time.perf_counter()))
            self._metrics.queue_depth.labels(self.model).inc()
            while len(self._queue) > self.limits.queue_frames:  # latest wins
                dropped = self._queue.popleft()
                self._skip(dropped.index)
            self._changed.notify_all()
        if counts.received >= self.limits.max_frames:
            await self._stop_intake("max_frames")

    async def _on_control(self, text: str) -> None:
        import json

        try:
            control = json.loads(text)
        except ValueError:
            control = None
        kind = control.get("type") if isinstance(control, dict) else None
        if kind == "end":
            await self._stop_intake("end")
            return
        async with self._changed:
            self.counts.notes.append(
                {
                    "type": "error",
                    "code": "bad_message",
                    "message": 'text messages are JSON controls: {"type": "end"}; '
                    "frames are binary messages",
                }
            )
            self._changed.notify_all()

    async def _stop_intake(self, reason: str) -> None:
        async with self._changed:
            self._intake_done = True
            self._end_reason = reason
            self._changed.notify_all()

    def _skip(self, index: int) -> None:
        """Record a dropped frame (caller holds ``_changed``)."""
        self.counts.skipped += 1
        self.counts.skipped_unsent.append(index)
        self._metrics.frames.labels(self.model, "skipped").inc()
        self._metrics.queue_depth.labels(self.model).dec()

    # ---------------------------------------------------------------- processing

    async def _worker(self) -> None:
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda: self._queue or self._intake_done)
                    if not self._queue:
                        break
                    frame = self._queue.popleft()
                    self._metrics.queue_depth.labels(self.model).dec()
                self._received_at[frame.index] = frame.received
                answers = await self._in_thread(self._process, frame)
                await self._deliver(answers)
            await self._deliver(await self._in_thread(self._flush))
            async with self._changed:
                self._finished = True
                self._changed.notify_all()
        except SessionEndError as end:
            self._fail(end)
        except Exception:
            log.exception("live session on %s failed", self.model)
            self._fail(SessionEndError("internal_error", "the server failed on this session"))

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        self._work = loop.run_in_executor(self.hub.executor, function, *args)
        try:
            return await asyncio.shield(self._work)
        finally:
            if self._work.done():
                self._work = None

    def _process(self, frame: _Frame) -> list[_Answer] | dict[str, Any]:
        """On a hub thread: decode, push, render; or the frame's error notice."""
        began = time.perf_counter()
        try:
            rgb = decode_image(frame.data, self.limits.max_pixels)
        except ImageTooLargeError as error:
            return _frame_error(frame.index, "image_too_large", str(error))
        except ImageDecodeError as error:
            return _frame_error(frame.index, "invalid_image", str(error))
        decode_ms = (time.perf_counter() - began) * 1e3
        if self.options.output == "overlay":
            self._kept_rgb[frame.index] = rgb
        results = self.segmenter.push(rgb, frame.index)
        return [self._rendered(result, decode_ms) for result in results]

    def _flush(self) -> list[_Answer]:
        return [self._rendered(result, 0.0) for result in self.segmenter.flush()]

    def _rendered(self, result: StreamMask, decode_ms: float) -> _Answer:
        began = time.perf_counter()
        rgb = self._kept_rgb.pop(result.frame, None)
        payload, fmt = self.render(rgb, result.mask)
        now = time.perf_counter()
        received = self._received_at.pop(result.frame, now)
        header = {
            "type": "mask",
            "frame": result.frame,
            "context": list(result.context),
            "width": int(result.mask.shape[1]),
            "height": int(result.mask.shape[0]),
            "format": fmt,
            "timings": {
                "decode_ms": round(decode_ms, 2),
                "encode_ms": round(result.encode_ms, 2),
                "head_ms": round(result.decode_ms, 2),
                "render_ms": round((now - began) * 1e3, 2),
                "total_ms": round((now - received) * 1e3, 2),
            },
        }
        self._metrics.latency.labels(self.model).observe(now - received)
        return _Answer(header, payload)

    async def _deliver(self, answers: list[_Answer] | dict[str, Any]) -> None:
        counts = self.counts
        if isinstance(answers, dict):  # the frame could not be decoded
            counts.invalid += 1
            counts.bad_in_a_row += 1
            self._metrics.frames.labels(self.model, "invalid").inc()
            if counts.bad_in_a_row >= self.limits.max_bad_frames:
                raise SessionEndError(
                    "too_many_invalid_frames",
                    f"{counts.bad_in_a_row} frames in a row could not be decoded; last: "
                    f"{answers['message']}",
                )
            async with self._changed:
                counts.notes.append(answers)
                self._changed.notify_all()
            return
        counts.bad_in_a_row = 0
        for answer in answers:
            async with self._changed:  # a client that does not read holds the worker here
                await self._changed.wait_for(lambda: len(self._out) < self.limits.max_unsent)
                self._out.append(answer)
                counts.processed += 1
                self._metrics.frames.labels(self.model, "processed").inc()
                self._changed.notify_all()

    # ---------------------------------------------------------------- sending

    async def _sender(self) -> None:
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(self._has_output)
                    if self._fatal is not None:
                        break
                    notes, self.counts.notes = self.counts.notes, []
                    skipped, self.counts.skipped_unsent = self.counts.skipped_unsent, []
                    answer = self._out.popleft() if self._out else None
                    last = answer is None and not notes and not skipped and self._finished
                    self._changed.notify_all()
                if skipped:
                    await self.socket.send_json({"type": "skipped", "skipped": skipped})
                for note in notes:
                    await self.socket.send_json(note)
                if answer is not None:
                    await self.socket.send_json(answer.header)
                    await self.socket.send_bytes(answer.payload)
                if last:
                    await self.socket.send_json({"type": "end", **self._summary()})
                    self._close = (1000, "")
                    self._done.set()
                    return
            await self._send_error(self._fatal)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._end_reason = "disconnect"  # the client went away mid-send
        self._done.set()

    def _has_output(self) -> bool:
        counts = self.counts
        return bool(
            self._fatal or self._out or counts.notes or counts.skipped_unsent or self._finished
        )

    def _summary(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "reason": self._end_reason,
            "received": counts.received,
            "processed": counts.processed,
            "skipped": counts.skipped,
            "invalid": counts.invalid,
        }

    def _fail(self, end: SessionEndError) -> None:
        """Record a fatal problem; the sender says it and closes (called on the loop)."""
        if self._fatal is None and not self._done.is_set():
            self._fatal = end

            async def wake() -> None:
                async with self._changed:
                    self._changed.notify_all()
                # a sender stuck on a client that does not read cannot say it: end anyway
                await asyncio.sleep(3 * _SEND_GRACE_S)
                self._done.set()

            self._watchdog = asyncio.get_running_loop().create_task(wake())

    async def _send_error(self, end: SessionEndError) -> None:
        """The error message and the close, bounded in time (the client may not read)."""
        socket = self.socket
        if socket.application_state != WebSocketState.CONNECTED:
            return
        body = {"type": "error", "code": end.code, "message": end.message, **self._summary()}
        with contextlib.suppress(Exception):
            await asyncio.wait_for(socket.send_json(body), _SEND_GRACE_S)
        self._close = (CLOSE_CODES.get(end.code, 1011), end.message[:120])


def _frame_error(index: int, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "frame": index}
