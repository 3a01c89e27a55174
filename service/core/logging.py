"""Structured logs: one JSON object per line (or plain text), with the request id attached.

The request id comes from the client's ``X-Request-Id`` or is made up per request; it is kept
in a context variable so every log line written while serving that request carries it.

Lines are rate-limited per message template: a flood of bad requests (malformed HTTP, slow
connections cut, refusals) must not turn into a flood of log lines that fills the disk. Past
a burst, each template gets a few lines a second, and the next line that passes says how many
were dropped.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import threading
import time

import orjson

__all__ = ["RateLimitFilter", "TextFormatter", "configure_logging", "escape_controls", "request_id"]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# uvicorn's ``color_message`` repeats the message with ANSI colour codes: never a field
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class RateLimitFilter(logging.Filter):
    """At most ``burst`` lines at once and ``per_second`` after that, per message template
    and error code (a token bucket each). Access lines of successful requests pass: they
    are bounded by the work done."""

    def __init__(self, per_second: float = 5.0, burst: int = 20) -> None:
        super().__init__()
        self.per_second = per_second
        self.burst = burst
        self._buckets: dict[tuple[str, str], list[float]] = {}  # tokens, last time, dropped
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status", None)
        if isinstance(status, int) and status < 400:
            return True  # access lines of answered requests: bounded by the work itself
        key = (record.name, f"{record.msg}|{getattr(record, 'error_code', '')}")
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > 10_000:  # templates are few; this only bounds the dict
                self._buckets.clear()
            tokens, last, dropped = self._buckets.get(key, [float(self.burst), now, 0.0])
            tokens = min(float(self.burst), tokens + (now - last) * self.per_second)
            if tokens < 1.0:
                self._buckets[key] = [tokens, now, dropped + 1]
                return False
            self._buckets[key] = [tokens - 1.0, now, 0.0]
        if dropped:
            record.suppressed = int(dropped)
            record.msg = f"{record.msg} ({int(dropped)} similar lines suppressed)"
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", ...extra}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value is not None and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: a client's bytes in a
# text log line (a request path, a header) must not end the line or steer a terminal
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\n``)."""
    return _CONTROLS.sub(lambda match: ascii(match.group())[1:-1], text)


class TextFormatter(logging.Formatter):
    """Plain text, one line per record: the message (client-controlled text included) has its
    control characters escaped, so no request can forge a log line or colour a terminal.
    A traceback, our own text, follows on its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        return escape_controls(line)


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """Send ``ccnet.*`` and uvicorn's logs to stderr in ``fmt`` ("json" or "text")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RateLimitFilter())
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    for name in ("ccnet", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    # our access log replaces uvicorn's (it has the request id, model and timings)
    logging.getLogger("uvicorn.access").disabled = True
