"""Per-request context: request id, security headers, access log line and request metrics.

A plain ASGI middleware (not ``BaseHTTPMiddleware``) so upload bodies stream through
untouched and the size limit can act while they arrive.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccnet.service.api.errors import CLIENT_CLOSED, error_response_for
from ccnet.service.core.logging import request_id
from ccnet.service.metrics import ServiceMetrics

__all__ = ["RequestContextMiddleware"]

log = logging.getLogger("ccnet.service.access")
errors_log = logging.getLogger("ccnet.service.errors")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# HTML that sets no policy of its own (error pages of other layers, future pages) gets the
# strictest one; the demo page and /docs set theirs
_HTML_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


_DOCS_URLS = ("docs_url", "redoc_url", "openapi_url", "swagger_ui_oauth2_redirect_url")


def _route_template(scope: Scope) -> str:
    """The matched route's path template; FastAPI's own docs routes are plain Starlette routes
    that leave no ``route`` in the scope, so they are recognised by the app's docs URLs."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    app = scope.get("app")
    docs = {getattr(app, name, None) for name in _DOCS_URLS} - {None}
    return scope["path"] if scope["path"] in docs else "unmatched"


def _log_unhandled(error: Exception, scope: Scope) -> None:
    frame = traceback.extract_tb(error.__traceback__)[-1:] or None
    where = f"{frame[0].filename.rsplit('/', 1)[-1]}:{frame[0].lineno}" if frame else "?"
    errors_log.error(
        "unhandled %s on %s %s at %s: %s",
        type(error).__name__,
        scope["method"],
        scope["path"],
        where,
        str(error)[:200],
        extra={"error_code": "internal_error"},
    )


class RequestContextMiddleware:
    """Tags each request with an id (the client's ``X-Request-Id`` if it is sane), marks
    every response ``X-Content-Type-Options: nosniff`` (and HTML without a policy with a
    restrictive CSP), then logs and counts it by route template, method, status and error
    code. A client that left mid-request is logged and counted as such (499), not as 500."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_header_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = offered if _SAFE_ID.match(offered) else uuid.uuid4().hex
        token = request_id.set(rid)
        began = time.perf_counter()
        outcome: dict[str, object] = {"status": 500, "code": "internal_error"}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["started"] = True
                headers = MutableHeaders(scope=message)
                headers["X-Request-Id"] = rid
                headers["X-Content-Type-Options"] = "nosniff"
                content_type = headers.get("content-type", "")
                if (
                    content_type.startswith("text/html")
                    and "content-security-policy" not in headers
                ):
                    headers["Content-Security-Policy"] = _HTML_CSP
                outcome["status"] = message["status"]
                outcome["code"] = headers.get("x-error-code")
                outcome["model"] = headers.get("x-model")
            await send(message)

        try:
            # the HTTP protocol bounds a head that is still arriving; one that arrived whole in
            # a single read is measured here
            head = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if head > self.max_header_bytes:
                response = error_response_for(
                    scope["path"],
                    431,
                    "headers_too_large",
                    f"the request headers hold {head} bytes, more than {self.max_header_bytes}",
                )
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as error:
            # a bug, not bad input: one log line (rate-limited like every other), never a
            # traceback per request, and the answer carries the request id and the headers
            _log_unhandled(error, scope)
            if outcome.get("started"):
                raise  # the answer is half sent: only closing the connection is left
            response = error_response_for(
                scope["path"], 500, "internal_error", "the server failed; see its log"
            )
            await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - began
            template = _route_template(scope)
            method = scope["method"]
            status = str(outcome["status"])
            self.metrics.requests.labels(template, method, status).inc()
            self.metrics.latency.labels(template, method).observe(seconds)
            if outcome["code"]:
                self.metrics.errors.labels(outcome["code"]).inc()
            if outcome["status"] == CLIENT_CLOSED:
                self.metrics.disconnects.inc()
            if template not in ("/healthz", "/readyz", "/metrics"):
                log.info(
                    "%s %s %s %.1f ms",
                    method,
                    scope["path"],
                    status,
                    seconds * 1e3,
                    extra={
                        "method": method,
                        "path": scope["path"],
                        "status": int(status),
                        "duration_ms": round(seconds * 1e3, 2),
                        "error_code": outcome["code"],
                        "model": outcome.get("model"),
                    },
                )
            request_id.reset(token)
