"""Liveness, readiness and Prometheus metrics: cheap, and open even when an API key is set."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ...metrics import CONTENT_TYPE
from ...schemas import Health
from ..errors import error_response

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, summary="Liveness")
def healthz(request: Request) -> Response | dict[str, str]:
    """200 while the process can serve; 503 when its models failed to load (restart it)."""
    error = request.app.state.load_error
    if error is not None:
        return error_response(503, "load_failed", f"the models failed to load: {error}")
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Health,
    response_model_exclude_none=True,
    summary="Readiness",
    responses={503: {"description": "still loading, or loading failed"}},
)
def readyz(request: Request) -> Response | dict[str, str]:
    """200 once every model is loaded and warmed up; 503 before (and after a failed load)."""
    state = request.app.state
    if state.load_error is not None:
        return error_response(503, "load_failed", f"the models failed to load: {state.load_error}")
    if not state.ready.is_set():
        return error_response(
            503, "not_ready", "the models are still loading", {"Retry-After": "2"}
        )
    return {"status": "ready"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Requests and latency by route and status, errors by code, queue depth, batch sizes and
    inference time by backend, in the Prometheus text format."""
    state = request.app.state
    if state.ready.is_set():
        state.registry.update_gauges()
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
