"""``WS /v1/stream``: live segmentation of a camera or stream, frame by frame (README: Live video).

The handshake is accepted first and every refusal is then *said*: a JSON
``{"type": "error", "code", "message"}`` and a close code (a browser's WebSocket sees nothing
of an HTTP refusal, only "closed"). In order: the ``Origin`` (same origin, or one of
``CORS_ORIGINS``), the API key (``X-API-Key`` / ``Authorization: Bearer`` for programs; for
browsers the subprotocol ``ccnet.key.KEY`` next to ``ccnet.v1``, which never lands in URLs or
access logs), the session cap, readiness, the model, the query options, the session's memory.
Then ``{"type": "ready", ...}`` and the session (``service.live.session``).

The session leases its model version for its whole life: a hot reload serves new sessions
from the new file while this one ends on the old one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import APIRouter, WebSocket

from ccnet.inference.backends.base import BackendError
from ccnet.inference.stream import StreamSegmenter
from ccnet.service.admission import OverBudgetError, Reservation
from ccnet.service.api.state import AppState, app_state
from ccnet.service.live.limits import StreamOptions, session_bytes
from ccnet.service.live.session import CLOSE_CODES, LiveSession, SessionEndError
from ccnet.service.registry import UnknownModelError
from ccnet.service.served import ServedVideoModel

__all__ = ["SUBPROTOCOL", "router"]

log = logging.getLogger("ccnet.service.live")
router = APIRouter()

SUBPROTOCOL = "ccnet.v1"
KEY_PREFIX = "ccnet.key."


def _origin_allowed(socket: WebSocket, allowed: list[str]) -> bool:
    """No Origin (not a browser), the same origin as the Host, or a listed one."""
    origin = socket.headers.get("origin")
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    host = socket.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower()


def _offered_key(socket: WebSocket, subprotocols: list[str]) -> str | None:
    key = socket.headers.get("x-api-key")
    if key is not None:
        return key
    authorization = socket.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    for protocol in subprotocols:
        if protocol.startswith(KEY_PREFIX):
            return protocol[len(KEY_PREFIX) :]
    return None


def _options(socket: WebSocket, state: AppState, window: int) -> StreamOptions:
    """The query options, validated (``validation_error`` names the bad one)."""
    query = socket.query_params
    settings = state.settings
    output = query.get("output", "mask")
    if output not in ("mask", "overlay"):
        raise SessionEndError("validation_error", f"output must be mask or overlay, got {output!r}")
    try:
        alpha = float(query.get("alpha", "0.5"))
        max_side = int(query.get("max_side", str(settings.max_video_side)))
        lookahead = int(query.get("lookahead", "0"))
    except ValueError as error:
        raise SessionEndError(
            "validation_error", f"a query option is not a number: {error}"
        ) from None
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise SessionEndError("validation_error", f"alpha must be in [0, 1], got {alpha}")
    if not 8 <= max_side <= settings.max_video_side:
        raise SessionEndError(
            "validation_error",
            f"max_side must be in [8, {settings.max_video_side}], got {max_side}",
        )
    if not 0 <= lookahead < window:
        raise SessionEndError(
            "validation_error",
            f"lookahead must be in [0, {window}) for this {window}-frame model, got {lookahead}",
        )
    return StreamOptions(output, alpha, max_side, lookahead)  # type: ignore[arg-type]


def _renderer(served: ServedVideoModel, options: StreamOptions):
    from ccnet.inference.codecs import encode_mask_png
    from ccnet.inference.overlay import compose_overlay
    from ccnet.inference.render import encode_overlay_image

    info = served.info

    def render(rgb: np.ndarray | None, mask: np.ndarray) -> tuple[bytes, str]:
        if options.output == "overlay" and rgb is not None:
            overlay = compose_overlay(rgb, mask, info.palette, info.classes, alpha=options.alpha)
            return encode_overlay_image(overlay, "jpeg"), "jpeg"
        return encode_mask_png(mask, info.palette), "png"

    return render


def _open_segmenter(served: ServedVideoModel, options: StreamOptions) -> StreamSegmenter:
    from ccnet.inference.stream_models import stream_model_for

    model = stream_model_for(served.backend)
    return StreamSegmenter(model, max_side=options.max_side, lookahead=options.lookahead)


async def _refuse(socket: WebSocket, end: SessionEndError, metrics: Any) -> None:
    metrics.closes.labels(end.code).inc()
    await socket.send_json({"type": "error", "code": end.code, "message": end.message})
    await socket.close(CLOSE_CODES.get(end.code, 1011), end.message[:120])


@router.websocket("/v1/stream")
async def stream(socket: WebSocket) -> None:
    """Live segmentation session (module docstring; the protocol is in the README)."""
    state = app_state(socket)
    hub = state.streams
    subprotocols = list(socket.scope.get("subprotocols") or [])
    await socket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in subprotocols else None)
    settings = state.settings
    if not _origin_allowed(socket, settings.cors_origins):
        origin = socket.headers.get("origin")
        end = SessionEndError("forbidden_origin", f"origin {origin} is not allowed (CORS_ORIGINS)")
        return await _refuse(socket, end, hub.metrics)
    if settings.api_key is not None:
        offered = _offered_key(socket, subprotocols)
        expected = settings.api_key.get_secret_value().encode()
        if offered is None or not secrets.compare_digest(offered.encode(), expected):
            message = (
                "a valid API key is required (X-API-Key, Authorization: Bearer, or the "
                f"subprotocol {KEY_PREFIX}KEY next to {SUBPROTOCOL})"
            )
            return await _refuse(socket, SessionEndError("unauthorized", message), hub.metrics)
    if not hub.take_slot():
        reason = hub.stopping or (
            f"{hub.limits.max_sessions} live sessions are open, the most this server takes "
            "(CCNET_STREAM_MAX_SESSIONS); try again later"
        )
        code = "going_away" if hub.stopping else "overloaded"
        return await _refuse(socket, SessionEndError(code, reason), hub.metrics)
    try:
        await _serve(socket, state)
    finally:
        hub.give_slot()


async def _serve(socket: WebSocket, state: AppState) -> None:
    hub = state.streams
    problem = state.readiness.problem()
    if problem is not None:
        return await _refuse(socket, SessionEndError("unavailable", problem.message), hub.metrics)
    name = socket.query_params.get("model")
    try:
        served = state.registry.lease(lambda: state.registry.get(name, ServedVideoModel))
    except UnknownModelError as error:
        return await _refuse(socket, SessionEndError("unknown_model", str(error)), hub.metrics)
    reservation: Reservation | None = None
    segmenter: StreamSegmenter | None = None
    try:
        options = _options(socket, state, served.info.window or 4)
        loop = asyncio.get_running_loop()
        try:
            segmenter = await loop.run_in_executor(hub.executor, _open_segmenter, served, options)
        except (BackendError, ValueError) as error:
            raise SessionEndError("validation_error", str(error)) from None
        reservation = _admit(state, served, segmenter, options)
        await socket.send_json(_ready(served, segmenter, options, reservation.nbytes, hub.limits))
        session = LiveSession(
            socket,
            segmenter,
            served.info.name,
            hub.limits,
            options,
            hub,
            _renderer(served, options),
        )
        hub.add(session)
        hub.metrics.sessions.labels(served.info.name).inc()
        try:
            reason = await session.run()
        finally:
            hub.discard(session)
            hub.metrics.sessions.labels(served.info.name).dec()
        hub.metrics.closes.labels(reason).inc()
        log.info(
            "live session on %s ended (%s): %s",
            served.info.name,
            reason,
            session.counts.__dict__ | {"notes": None, "skipped_unsent": None},
        )
    except SessionEndError as end:
        await _refuse(socket, end, hub.metrics)
    finally:
        if segmenter is not None:
            segmenter.close()
        if reservation is not None:
            reservation.release()
        served.release()


def _admit(
    state: AppState, served: ServedVideoModel, segmenter: StreamSegmenter, options: StreamOptions
) -> Reservation:
    """The session's worst-case memory from the budget (``service.live.limits``)."""
    limits = state.streams.limits
    side = min(options.max_side, math.isqrt(limits.max_pixels))
    cost = session_bytes(
        limits,
        options,
        state_bytes=segmenter.state_bytes(side, side),
        window_frames=segmenter.window,
        activation_per_pixel=served.activation_per_pixel,
    )
    try:
        reservation = state.budget.reserve(cost.total, "a live session")
    except OverBudgetError as error:
        code = "overloaded" if error.fits_ever else "payload_too_large"
        raise SessionEndError(code, str(error)) from None
    state.metrics.budget_used.set(state.budget.used)
    return reservation


def _ready(
    served: ServedVideoModel,
    segmenter: StreamSegmenter,
    options: StreamOptions,
    reserved: int,
    limits: Any,
) -> dict[str, Any]:
    info = served.info
    return {
        "type": "ready",
        "model": info.name,
        "version": served.version.describe() if served.version is not None else None,
        "backend": segmenter.model.name,
        "window": segmenter.window,
        "lookahead": options.lookahead,
        "output": options.output,
        "max_side": options.max_side,
        "classes": [
            {"id": i, "name": n, "color": list(info.palette[i])} for i, n in enumerate(info.classes)
        ],
        "limits": {
            "queue_frames": limits.queue_frames,
            "max_unsent": limits.max_unsent,
            "idle_timeout_s": limits.idle_timeout_s,
            "max_frames": limits.max_frames,
            "max_duration_s": limits.max_duration_s,
            "max_frame_bytes": limits.max_frame_bytes,
        },
        "reserved_bytes": reserved,
    }
