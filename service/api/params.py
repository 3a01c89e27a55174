"""Query parameter types and OpenAPI tables shared by the segmentation routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from ccnet.service.schemas import ErrorResponse

__all__ = ["ERROR_RESPONSES", "ModelName", "OverlayAlpha", "upload_body"]

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
        400: "undecodable input or malformed multipart body",
        401: "API key missing or wrong",
        413: "too many bytes, pixels or frames, or more memory than the server's budget",
        415: "unsupported or malformed media type",
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
