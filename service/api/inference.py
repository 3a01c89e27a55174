"""What both segmentation routes share: the model parameter, picking the model, and running
work on the model's queue with back-pressure and a timeout."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Annotated, Any, Protocol

from fastapi import Query

from ..batching import OverloadedError
from ..core.config import Settings
from ..registry import ModelRegistry, ServedModel, UnknownModelError
from ..schemas import ErrorResponse
from .errors import ApiError

__all__ = [
    "ERROR_RESPONSES",
    "ModelName",
    "OverlayAlpha",
    "refuse_if_full",
    "run_queued",
    "served_model",
    "upload_body",
]

ModelName = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=128,
        description="a model name from /v1/models; the default model of the kind if omitted",
    ),
]
OverlayAlpha = Annotated[float, Query(ge=0.0, le=1.0, description="overlay opacity")]
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "undecodable input",
        401: "API key missing or wrong",
        413: "too many bytes, pixels or frames",
        415: "unsupported media type",
        422: "bad parameters or unknown model",
        503: "overloaded, timed out or not ready (see Retry-After)",
    }.items()
}


def upload_body(field: str, raw_media_types: tuple[str, ...]) -> dict[str, Any]:
    """The OpenAPI request body of an upload: multipart field ``field``, or a raw body."""
    binary = {"type": "string", "format": "binary"}
    multipart = {"type": "object", "required": [field], "properties": {field: binary}}
    content = {"multipart/form-data": {"schema": multipart}}
    content.update({media_type: {"schema": binary} for media_type in raw_media_types})
    return {"requestBody": {"required": True, "content": content}}


class _Runner(Protocol):
    """A model's work queue: ``MicroBatcher`` (images) or ``BoundedExecutor`` (clips)."""

    def has_room(self) -> bool: ...

    def submit(self, work: Any) -> Future[Any]: ...


def served_model(registry: ModelRegistry, name: str | None, kind: str) -> ServedModel:
    """The requested model, or 422 ``unknown_model``."""
    try:
        return registry.get(name, kind)
    except UnknownModelError as error:
        raise ApiError(422, "unknown_model", str(error)) from None


def _overloaded(settings: Settings, error: OverloadedError) -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"the server is at capacity ({error}); retry shortly",
        {"Retry-After": str(settings.retry_after_s)},
    )


def refuse_if_full(runner: _Runner, settings: Settings) -> None:
    """503 ``overloaded`` now if the queue is full: called before decoding, so a refusal under
    load costs next to nothing."""
    if not runner.has_room():
        raise _overloaded(settings, OverloadedError("the queue is full"))


async def run_queued(runner: _Runner, work: Any, settings: Settings) -> Any:
    """Queue ``work`` on ``runner`` and wait for its result without blocking the event loop.

    Raises:
        ApiError: 503 ``overloaded`` when the queue is full, 503 ``timeout`` (the work is
            cancelled if it has not started) after ``request_timeout_s``.
    """
    try:
        future = runner.submit(work)
    except OverloadedError as error:
        raise _overloaded(settings, error) from None
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), settings.request_timeout_s)
    except TimeoutError:
        future.cancel()
        raise ApiError(
            503,
            "timeout",
            f"inference did not finish within {settings.request_timeout_s:g} s",
            {"Retry-After": str(settings.retry_after_s)},
        ) from None
