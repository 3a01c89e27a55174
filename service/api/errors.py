"""Every error the API returns has the body ``{"error": {"code": str, "message": str}}``.

Codes are stable and machine-readable; messages are for people. Handlers here turn FastAPI's
validation errors, unknown routes and unexpected exceptions into the same shape.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

__all__ = ["CLIENT_CLOSED", "ApiError", "error_response", "install_error_handlers"]

# nginx's status for "the client closed the connection before the answer": never sent (there
# is nobody to send it to), but it is what the access log and the metrics record
CLIENT_CLOSED = 499

log = logging.getLogger("ccnet.service.errors")

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


def _describe(errors: list[dict]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through ``error_response``."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> Response:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> Response:
        return error_response(422, "validation_error", _describe(list(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> Response:
        code = _CODES_BY_STATUS.get(error.status_code, "http_error")
        message = error.detail if isinstance(error.detail, str) else code.replace("_", " ")
        return error_response(error.status_code, code, message, dict(error.headers or {}))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        # not a server error: the upload stopped because the client left (logged as such by
        # the access log, counted by ccnet_client_disconnects_total)
        return error_response(
            CLIENT_CLOSED, "client_disconnected", "the client closed the connection mid-request"
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        # a bug, not bad input, answered without details; the request middleware has logged
        # it in one line (no traceback per request: a client repeating it would flood the log)
        log.debug("unhandled %s on %s %s", type(error).__name__, request.method, request.url.path)
        return error_response(500, "internal_error", "the server failed; see its log")
