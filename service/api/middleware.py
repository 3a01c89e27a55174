"""Per-request context: request id, access log line and request metrics.

A plain ASGI middleware (not ``BaseHTTPMiddleware``) so upload bodies stream through
untouched and the size limit can act while they arrive.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.logging import request_id
from ..metrics import ServiceMetrics

__all__ = ["RequestContextMiddleware"]

log = logging.getLogger("ccnet.service.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    """Tags each request with an id (the client's ``X-Request-Id`` if it is sane), then
    logs and counts it by route template, method, status and error code."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

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
                headers = MutableHeaders(scope=message)
                headers["X-Request-Id"] = rid
                outcome["status"] = message["status"]
                outcome["code"] = headers.get("x-error-code")
                outcome["model"] = headers.get("x-model")
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - began
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            status = str(outcome["status"])
            self.metrics.requests.labels(template, method, status).inc()
            self.metrics.latency.labels(template, method).observe(seconds)
            if outcome["code"]:
                self.metrics.errors.labels(outcome["code"]).inc()
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
