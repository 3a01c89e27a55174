"""GET /v1/models: what this server can segment with; POST /v1/models/reload: check the
models folder now (hot reload, ``service.reload``)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ccnet.service.api.deps import ApiKey, RegistryDep, StateDep
from ccnet.service.api.errors import ApiError
from ccnet.service.registry import ModelRegistry
from ccnet.service.schemas import ErrorResponse, ModelList, ReloadResponse

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[ApiKey])


def _listing(registry: ModelRegistry) -> dict[str, object]:
    return {
        "models": [
            served.describe(default=registry.defaults.get(served.info.kind) == served.info.name)
            for served in registry
        ],
        "failures": [failure.describe() for failure in list(registry.failures.values())],
    }


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
    """Every loaded model: name, kind (image or video), backend, version (the file's SHA-256
    and when it started serving) and its classes with colours. The default model of each kind
    is the one used when a request names none. ``failures`` lists the models-folder files that
    did not (re)load; whatever served before them still does."""
    return _listing(registry)


@router.post(
    "/models/reload",
    response_model=ReloadResponse,
    summary="Reload the models folder now",
    responses={
        401: {"model": ErrorResponse, "description": "API key missing or wrong"},
        409: {"model": ErrorResponse, "description": "no models folder (CCNET_MODEL_DIR)"},
        422: {
            "model": ErrorResponse,
            "description": "a file of the models folder failed to load (reload_failed), or "
            "malformed headers",
        },
        503: {"model": ErrorResponse, "description": "the models are still loading"},
    },
)
async def reload_models(registry: RegistryDep, state: StateDep) -> dict[str, object]:
    """Check ``CCNET_MODEL_DIR`` at once, as the periodic poll does but without waiting for a
    file to stop changing (the caller says its copy is complete): new or changed files are
    loaded and warmed up while the old versions serve, then swapped in; removed files are
    unloaded. Answers what changed and the models now served, or 422 ``reload_failed`` naming
    each file that does not load (whatever served before keeps serving)."""
    watcher = state.watcher
    if watcher is None:
        raise ApiError(409, "no_model_dir", "no models folder is configured (set CCNET_MODEL_DIR)")
    # on the watcher's own thread: waiting for a slow reload holds no request thread
    report = await asyncio.wrap_future(watcher.request_poll())
    failures = list(registry.failures.values())
    if failures:  # not a 2xx: the folder is not what serves (Triton's load API answers 400)
        described = "; ".join(f"{f.file}: {f.message}" for f in failures)
        raise ApiError(
            422,
            "reload_failed",
            f"{len(failures)} file(s) of the models folder did not load ({described}); "
            "the last good versions keep serving, GET /v1/models lists them",
        )
    return {"report": report.describe(), **_listing(registry)}
