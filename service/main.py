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
from fastapi.middleware.cors import CORSMiddleware

from ccnet._version import package_version
from ccnet.service.api.errors import install_error_handlers
from ccnet.service.api.middleware import RequestContextMiddleware
from ccnet.service.api.routes import (
    docs,
    health,
    models,
    segment,
    stream,
    ui,
    v2,
    v2_repository,
    video,
)
from ccnet.service.api.state import AppState, app_state
from ccnet.service.core.config import Settings, get_settings
from ccnet.service.core.logging import configure_logging
from ccnet.service.core.memory import pin_malloc_thresholds
from ccnet.service.registry import Preparer
from ccnet.service.reload import ModelWatcher
from ccnet.service.served import DuplicateModelError, ModelLoadError

__all__ = ["create_app"]

log = logging.getLogger("ccnet.service")

_DESCRIPTION = """
Semantic segmentation with CCNet (criss-cross attention) for images and, with CCNet3D, video
clips. Every error is `{"error": {"code", "message"}}`. With `CCNET_API_KEY` set, `/v1/*`
needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.
"""


def _load(state: AppState, stop_on_failure: bool) -> None:
    try:
        state.registry.load()
    except Exception as error:  # /healthz and /readyz name the model; the log has the rest
        log.exception("loading the models failed")
        if isinstance(error, ModelLoadError):
            state.readiness.set_failed(error.model)
        elif isinstance(error, DuplicateModelError):
            state.readiness.set_failed(reason=str(error))
        elif isinstance(error, FileNotFoundError) and state.settings.model_dir is not None:
            state.readiness.set_failed(reason="the models folder does not exist")
        else:
            state.readiness.set_failed()
        if stop_on_failure:
            # A server that can never become ready should exit (non-zero, after a graceful
            # shutdown), so Docker's restart policy or the orchestrator sees the failure.
            log.error("stopping: the service cannot serve without its models")
            os.kill(os.getpid(), signal.SIGTERM)
        return
    directory = state.settings.model_dir
    if directory is not None:  # hot reload, from the files just loaded (none loads twice)
        state.watcher = ModelWatcher(
            directory,
            state.registry,
            interval_s=state.settings.model_poll_s,
            initial=state.registry.served_files(directory),
            on_failure=state.registry.record_failure,
        )
        state.watcher.start()
    state.readiness.set_ready()
    state.metrics.ready.set(1)
    log.info("ready: %s", ", ".join(served.info.name for served in state.registry))


def create_app(
    settings: Settings | None = None,
    *,
    background_load: bool = True,
    preparer: Preparer | None = None,
) -> FastAPI:
    """Build the app.

    Args:
        settings: defaults to ``Settings()`` read from ``CCNET_*`` environment variables.
        background_load: load models in a thread after start-up (the server answers health
            checks meanwhile) and stop the process if they fail to load; False loads them
            during start-up and keeps the app up to report the failure (tests).
        preparer: makes what the backend runs for a model file (its ONNX export, its
            engine) before a hot reload loads it; ``ccnet serve`` passes one. Without it a
            reloaded checkpoint only finds what was prepared already (the app itself never
            imports the export build side).
    """
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level)
    pin_malloc_thresholds()
    state = AppState.create(settings, preparer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Reference-counted: test clients may enter the lifespan of an app that is already
        # running; models load on the first entry and close on the last exit.
        state = app_state(app)
        state.lifespans += 1
        if state.lifespans == 1:
            state.loader = threading.Thread(
                target=_load, args=(state, background_load), name="model-loader", daemon=True
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
                if state.loader is not None and state.loader.is_alive():
                    state.loader.join()
                state.close()

    app = FastAPI(
        title="CCNet segmentation service",
        description=_DESCRIPTION,
        version=package_version(),
        lifespan=lifespan,
        docs_url=None,  # served offline by routes.docs
        redoc_url=None,
    )
    app.state.ccnet = state
    app.add_middleware(
        RequestContextMiddleware, metrics=state.metrics, max_header_bytes=settings.max_header_bytes
    )
    if settings.cors_origins:  # off unless origins are listed (CCNET_CORS_ORIGINS)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Model", "X-Inference-Ms", "X-Request-Id", "Retry-After"],
        )
    install_error_handlers(app)
    for router in (
        health.router,
        models.router,
        segment.router,
        video.router,
        ui.router,
        docs.router,
        v2_repository.router,  # before v2's: /v2/models/stats is not a model called "stats"
        v2.router,
        stream.router,
    ):
        app.include_router(router)
    return app
