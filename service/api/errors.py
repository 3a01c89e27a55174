"""Every error the API returns has the body ``{"error": {"code": str, "message": str}}``,
except under ``/v2``: there the Open Inference Protocol's shape, ``{"error": str}``.

Codes are stable and machine-readable; messages are for people. Handlers here turn FastAPI's
validation errors, unknown routes and unexpected exceptions into the same shape, chosen by the
request's path, so a ``/v2`` path that matches no route (a 404, a 405) answers in the
protocol's shape too: Triton's client formats ``error`` as a string and raises TypeError on
an object.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

__all__ = [
    "CLIENT_CLOSED",
    "PROTOCOL_PREFIX",
    "ApiError",
    "error_response",
    "error_response_for",
    "install_error_handlers",
    "protocol_error_response",
]

# nginx's status for "the client closed the connection before the answer": never sent (there
# is nobody to send it to), but it is what the access log and the metrics record
CLIENT_CLOSED = 499

log = logging.getLogger("ccnet.service.errors")

PROTOCOL_PREFIX = "/v2"  # the Open Inference Protocol (KServe v2, as Triton speaks it)

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: HTTP status, stable code, readable message, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The JSON error body with its status (and ``X-Error-Code`` for metrics and logs)."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={**(headers or {}), "X-Error-Code": code},
    )


def protocol_error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The protocol's error body, ``{"error": "<code>: <message>", "code": "<code>"}``: Triton
    answers ``{"error": str}`` and its client reads only that key; ``code`` is ours, the
    stable code that /v1 puts in ``error.code`` (a client that ignores it loses nothing)."""
    body = orjson.dumps({"error": f"{code}: {message}", "code": code})
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={**(headers or {}), "X-Error-Code": code},
    )


def _is_protocol(path: str) -> bool:
    return path == PROTOCOL_PREFIX or path.startswith(f"{PROTOCOL_PREFIX}/")


def error_response_for(
    path: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The error answer in the shape of the API that ``path`` belongs to (/v2 or the rest)."""
    respond = protocol_error_response if _is_protocol(path) else error_response
    return respond(status, code, message, headers)


def _describe(errors: list[dict]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through ``error_response_for`` (the shape follows the path)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error_response_for(
            request.url.path, error.status, error.code, error.message, error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        message = _describe(list(error.errors()))
        return error_response_for(request.url.path, 422, "validation_error", message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = _CODES_BY_STATUS.get(error.status_code, "http_error")
        message = error.detail if isinstance(error.detail, str) else code.replace("_", " ")
        path = request.url.path
        if _is_protocol(path) and error.status_code in (404, 405):
            message = f"{message}: {request.method} {path} (see /docs for the /v2 routes)"
        headers = dict(error.headers or {})
        return error_response_for(path, error.status_code, code, message, headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        # not a server error: the upload stopped because the client left (logged as such by
        # the access log, counted by ccnet_client_disconnects_total)
        return error_response_for(
            request.url.path,
            CLIENT_CLOSED,
            "client_disconnected",
            "the client closed the connection mid-request",
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        # a bug, not bad input, answered without details; the request middleware has logged
        # it in one line (no traceback per request: a client repeating it would flood the log)
        log.debug("unhandled %s on %s %s", type(error).__name__, request.method, request.url.path)
        return error_response_for(
            request.url.path, 500, "internal_error", "the server failed; see its log"
        )
