"""Whether the service can serve: one source for /readyz, /healthz and every /v1 route.

Model loading happens in a background thread; it reports here. A failure is kept as the
*name* of the model that failed: the reason (which often holds a file path) goes to the log
only, because /healthz and /readyz are open to anyone who can reach the port.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["Readiness", "ReadinessProblem"]


@dataclass(frozen=True)
class ReadinessProblem:
    """Why the service cannot serve (yet): ``code`` is ``not_ready`` or ``load_failed``."""

    code: str
    message: str
    retry_after_s: int | None = None


class Readiness:
    """Loading → ready, or loading → failed; thread-safe, set once."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._failure: str | None = None

    def set_ready(self) -> None:
        self._ready.set()

    def set_failed(self, model: str | None = None, *, reason: str | None = None) -> None:
        """Loading failed: name the ``model`` (its reason stays in the log), or give a
        ``reason`` that is known to hold no path (a configuration error such as two models
        sharing a name)."""
        if reason is not None:
            self._failure = f"the models failed to load: {reason}"
        elif model is not None:
            self._failure = f"the model {model!r} failed to load; the server log has the reason"
        else:
            self._failure = "the models failed to load; the server log has the reason"

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._failure is None

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def problem(self) -> ReadinessProblem | None:
        """None when ready, else what to answer."""
        if self._failure is not None:
            return ReadinessProblem("load_failed", self._failure)
        if not self._ready.is_set():
            return ReadinessProblem("not_ready", "the models are still loading", retry_after_s=2)
        return None
