"""GET /v1/models: what this server can segment with."""

from __future__ import annotations

from fastapi import APIRouter

from ...schemas import ErrorResponse, ModelList
from ..deps import ApiKey, RegistryDep

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[ApiKey])


@router.get(
    "/models",
    response_model=ModelList,
    summary="Loaded models",
    responses={
        401: {"model": ErrorResponse, "description": "API key missing or wrong"},
        422: {"model": ErrorResponse, "description": "malformed headers"},
        503: {"model": ErrorResponse, "description": "the models are still loading"},
    },
)
def list_models(registry: RegistryDep) -> dict[str, object]:
    """Every loaded model: name, kind (image or video), backend and its classes with colours.
    The default model of each kind is the one used when a request names none."""
    return {
        "models": [
            served.describe(default=registry.defaults.get(served.info.kind) == served.info.name)
            for served in registry
        ]
    }
