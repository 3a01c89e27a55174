"""The FastAPI application: assembled here from settings, routers and handlers, nothing else.

``create_app`` is the uvicorn factory (``uvicorn --factory service.main:create_app``). Models
load in a background thread after start-up, so the process answers /healthz at once and
/readyz turns 200 only when every model is loaded and warmed up.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .api.errors import install_error_handlers
from .api.middleware import RequestContextMiddleware
from .api.routes import health, models, segment, ui, video
from .core.config import Settings, get_settings
from .core.logging import configure_logging
from .metrics import ServiceMetrics
from .registry import ModelRegistry

__all__ = ["create_app"]

log = logging.getLogger("ccnet.service")

_DESCRIPTION = """
Semantic segmentation with CCNet (criss-cross attention) for images and, with CCNet3D, video
clips. Every error is `{"error": {"code", "message"}}`. With `CCNET_API_KEY` set, `/v1/*`
needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.
"""


def _load(app: FastAPI, stop_on_failure: bool) -> None:
    state = app.state
    try:
        state.registry.load()
    except Exception as error:  # reported by /healthz and /readyz; the log has the traceback
        log.exception("loading the models failed")
        state.load_error = str(error)
        if stop_on_failure:
            # A server that can never become ready should exit (non-zero, after a graceful
            # shutdown), so Docker's restart policy or the orchestrator sees the failure.
            log.error("stopping: the service cannot serve without its models")
            os.kill(os.getpid(), signal.SIGTERM)
        return
    state.ready.set()
    state.metrics.ready.set(1)
    log.info("ready: %s", ", ".join(served.info.name for served in state.registry))


def create_app(settings: Settings | None = None, *, background_load: bool = True) -> FastAPI:
    """Build the app.

    Args:
        settings: defaults to ``Settings()`` read from ``CCNET_*`` environment variables.
        background_load: load models in a thread after start-up (the server answers health
            checks meanwhile) and stop the process if they fail to load; False loads them
            during start-up and keeps the app up to report the failure (tests).
    """
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level)
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Reference-counted: test clients may enter the lifespan of an app that is already
        # running; models load on the first entry and close on the last exit.
        state = app.state
        state.lifespans += 1
        if state.lifespans == 1:
            state.loader = threading.Thread(
                target=_load, args=(app, background_load), name="model-loader", daemon=True
            )
            if background_load:
                state.loader.start()
            else:
                state.loader.run()
        try:
            yield
        finally:
            state.lifespans -= 1
            if state.lifespans == 0:
                if state.loader.is_alive():
                    state.loader.join()
                state.registry.close()

    app = FastAPI(
        title="CCNet segmentation service",
        description=_DESCRIPTION,
        version="1.0.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = ModelRegistry(settings, metrics)
    app.state.ready = threading.Event()
    app.state.load_error = None
    app.state.lifespans = 0
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    install_error_handlers(app)
    for router in (health.router, models.router, segment.router, video.router, ui.router):
        app.include_router(router)
    return app
