"""Request dependencies: settings, the model registry, metrics and the API-key check.

Each is a provider function plus an ``Annotated`` alias that routes reuse.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request

from ..core.config import Settings
from ..metrics import ServiceMetrics
from ..registry import ModelRegistry
from .errors import ApiError

__all__ = ["ApiKey", "MetricsDep", "RegistryDep", "SettingsDep", "require_api_key"]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_registry(request: Request) -> ModelRegistry:
    """The loaded models; 503 (with Retry-After) until loading and warm-up are done."""
    state = request.app.state
    if state.load_error is not None:
        raise ApiError(503, "not_ready", f"the models failed to load: {state.load_error}")
    if not state.ready.is_set():
        raise ApiError(503, "not_ready", "the models are still loading", {"Retry-After": "2"})
    return state.registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


def require_api_key(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """With ``CCNET_API_KEY`` set, requests need ``Authorization: Bearer KEY`` or
    ``X-API-Key: KEY``; compared in constant time."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    offered = x_api_key
    if offered is None and authorization is not None:
        scheme, _, token = authorization.partition(" ")
        offered = token.strip() if scheme.lower() == "bearer" else None
    if offered is None or not secrets.compare_digest(offered.encode(), expected):
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer KEY or X-API-Key: KEY)",
            {"WWW-Authenticate": "Bearer"},
        )


ApiKey = Depends(require_api_key)
