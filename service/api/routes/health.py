"""Liveness, readiness and Prometheus metrics: cheap; the probes are open even when an API key
is set, /metrics needs the key then (it names the models and shows the live memory budget,
which tells an attacker how large an upload to aim with).

/healthz and /readyz read the same ``Readiness`` as every /v1 route. They never show a
file path or an exception text (they are open to anyone who can reach the port): a failed
load names the model, and the log has the rest.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from ccnet.service.api.deps import ApiKey, StateDep, readiness_error, serving_problem
from ccnet.service.api.errors import error_response
from ccnet.service.metrics import CONTENT_TYPE
from ccnet.service.schemas import Health

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, summary="Liveness")
def healthz(state: StateDep) -> Response | dict[str, str]:
    """200 while the process can serve; 503 when its models failed to load (restart it)."""
    problem = state.readiness.problem()
    if problem is not None and problem.code == "load_failed":
        error = readiness_error(problem)
        return error_response(error.status, error.code, error.message, error.headers)
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Health,
    response_model_exclude_none=True,
    summary="Readiness",
    responses={503: {"description": "still loading, or loading failed"}},
)
def readyz(state: StateDep) -> Response | dict[str, str]:
    """200 once every model is loaded and warmed up; 503 before, after a failed load, and
    while no model is loaded at all (an empty models folder: every request would fail)."""
    problem = serving_problem(state)
    if problem is not None:
        error = readiness_error(problem)
        return error_response(error.status, error.code, error.message, error.headers)
    return {"status": "ready"}


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[ApiKey]
)
def metrics(state: StateDep) -> Response:
    """Requests and latency by route and status, errors by code, queue depth, batch sizes,
    inference time by backend and the memory budget in use, in the Prometheus text format."""
    if state.readiness.ready:
        state.registry.update_gauges()
    state.metrics.budget_used.set(state.budget.used)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
