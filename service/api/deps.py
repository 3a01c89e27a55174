"""Request dependencies: application state, readiness, the model a request asks for, the
API-key check.

Each is a provider function plus an ``Annotated`` alias that routes reuse, so a handler
receives what it needs ready and its body is the request's story, not its checks. FastAPI
runs a router's ``dependencies`` (the API key) before a handler's own, so every /v1 request
is checked in the same order: API key, readiness, model lookup.
"""

from __future__ import annotations

import difflib
import secrets
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ccnet.service.api.errors import ApiError
from ccnet.service.api.params import ModelName
from ccnet.service.api.state import AppState, app_state
from ccnet.service.core.config import Settings
from ccnet.service.core.readiness import ReadinessProblem
from ccnet.service.metrics import ServiceMetrics
from ccnet.service.registry import (
    ModelRegistry,
    NoModelsError,
    Served,
    UnknownModelError,
    WrongModelKindError,
)
from ccnet.service.served import ServedImageModel, ServedVideoModel

__all__ = [
    "ApiKey",
    "ImageModelDep",
    "KnownQuery",
    "MetricsDep",
    "RegistryDep",
    "SettingsDep",
    "StateDep",
    "readiness_error",
    "require_api_key",
    "serving_problem",
]


def get_state(request: Request) -> AppState:
    return app_state(request)


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_metrics(state: StateDep) -> ServiceMetrics:
    return state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]


def readiness_error(problem: ReadinessProblem) -> ApiError:
    """The 503 answer for a readiness problem (shared with /readyz and /healthz)."""
    headers = {"Retry-After": str(problem.retry_after_s)} if problem.retry_after_s else None
    return ApiError(503, problem.code, problem.message, headers)


def get_registry(state: StateDep) -> ModelRegistry:
    """The loaded models; 503 until loading and warm-up are done (or after they failed)."""
    problem = state.readiness.problem()
    if problem is not None:
        raise readiness_error(problem)
    return state.registry


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


NO_MODELS = ReadinessProblem(
    "no_models",
    "no model is loaded (the models folder is empty, or its files failed to load: "
    "GET /v1/models lists them)",
    retry_after_s=10,
)


def serving_problem(state: AppState) -> ReadinessProblem | None:
    """Why the service cannot answer a segmentation now: still loading, loading failed, or
    nothing loaded at all (a models folder emptied, or every file in it failing)."""
    problem = state.readiness.problem()
    if problem is None and len(state.registry) == 0:
        return NO_MODELS
    return problem


def _lookup(registry: ModelRegistry, name: str | None, kind: type):
    try:
        return registry.get(name, kind)
    except NoModelsError:
        raise readiness_error(NO_MODELS) from None
    except WrongModelKindError as error:
        raise ApiError(422, "wrong_model_kind", str(error)) from None
    except UnknownModelError as error:
        raise ApiError(422, "unknown_model", str(error)) from None


def leased(registry: ModelRegistry, pick: Callable[[], Served]) -> Iterator[Served]:
    """``pick()``'s model, leased for the request (the body of every model dependency): a hot
    reload swapping it meanwhile closes it only after the request is done."""
    served = registry.lease(pick)
    try:
        yield served
    finally:
        served.release()


def get_image_model(registry: RegistryDep, model: ModelName = None) -> Iterator[ServedImageModel]:
    """The image model named by ``?model=`` (or the default one); 422 ``unknown_model``."""
    yield from leased(registry, lambda: _lookup(registry, model, ServedImageModel))


def get_video_model(registry: RegistryDep, model: ModelName = None) -> Iterator[ServedVideoModel]:
    """The clip model named by ``?model=`` (or the default one); 422 ``unknown_model``."""
    yield from leased(registry, lambda: _lookup(registry, model, ServedVideoModel))


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def refuse_unknown_query(request: Request) -> None:
    """422 ``unknown_parameter`` for a query parameter the route does not take (``?outptu=``
    was ignored, and the default output answered 200): the known ones are listed."""
    route = request.scope.get("route")
    if route is None or not isinstance(route, APIRoute):
        return
    known = _query_names(route.dependant)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ApiError(
            422,
            "unknown_parameter",
            f"unknown query parameter {unknown[0]!r}{hint}; this route takes: "
            + (", ".join(sorted(known)) or "none"),
        )


KnownQuery = Depends(refuse_unknown_query)

ImageModelDep = Annotated[ServedImageModel, Depends(get_image_model)]
VideoModelDep = Annotated[ServedVideoModel, Depends(get_video_model)]

# Declared as security schemes, so /openapi.json (and the Authorize button of /docs) knows
# the API takes a key; auto_error=False because without CCNET_API_KEY no key is needed.
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="the key set by CCNET_API_KEY"
)
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY (CCNET_API_KEY)")


def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """With ``CCNET_API_KEY`` set, requests need ``Authorization: Bearer KEY`` or
    ``X-API-Key: KEY``; compared in constant time."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    offered = x_api_key if x_api_key is not None else (bearer.credentials if bearer else None)
    if offered is None or not secrets.compare_digest(offered.encode(), expected):
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer KEY or X-API-Key: KEY)",
            {"WWW-Authenticate": "Bearer"},
        )


ApiKey = Depends(require_api_key)
