"""POST /v1/segment: one image in, its segmentation out (mask PNG, overlay or JSON)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from ...batching import OverloadedError
from ...codecs import ImageDecodeError, ImageTooLargeError, decode_image, encode_mask_png
from ...core.config import Settings
from ...outputs import encode_overlay_image, image_json
from ...pipeline import labels_from_logits, prepare_image
from ...registry import ServedModel, UnknownModelError
from ...schemas import ErrorResponse, ImageSegmentation
from ..deps import ApiKey, RegistryDep, SettingsDep
from ..errors import ApiError
from ..media import IMAGE_MEDIA_TYPES, check_media_type
from ..upload import read_upload

__all__ = ["ModelName", "overloaded", "router", "served_model", "timed_out"]

router = APIRouter(prefix="/v1", tags=["segmentation"], dependencies=[ApiKey])

ModelName = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=128,
        description="a model name from /v1/models; the default model of the kind if omitted",
    ),
]
_ERRORS = {
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
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def served_model(registry: RegistryDep, name: str | None, kind: str) -> ServedModel:
    """The requested model, or 422 ``unknown_model``."""
    try:
        return registry.get(name, kind)
    except UnknownModelError as error:
        raise ApiError(422, "unknown_model", str(error)) from None


def overloaded(settings: Settings, error: OverloadedError) -> ApiError:
    return ApiError(
        503,
        "overloaded",
        f"the server is at capacity ({error}); retry shortly",
        {"Retry-After": str(settings.retry_after_s)},
    )


def timed_out(settings: Settings) -> ApiError:
    return ApiError(
        503,
        "timeout",
        f"inference did not finish within {settings.request_timeout_s:g} s",
        {"Retry-After": str(settings.retry_after_s)},
    )


def _decode(data: bytes, max_pixels: int):
    try:
        return decode_image(data, max_pixels)
    except ImageTooLargeError as error:
        raise ApiError(413, "image_too_large", str(error)) from None
    except ImageDecodeError as error:
        raise ApiError(400, "invalid_image", str(error)) from None


@router.post(
    "/segment",
    summary="Segment an image",
    response_class=Response,
    responses={
        200: {
            "model": ImageSegmentation,
            "description": "the mask PNG (default), the overlay, or JSON statistics",
            "content": {
                "image/png": {},
                "image/jpeg": {},
            },
            "headers": {
                "X-Model": {"description": "the model that ran", "schema": {"type": "string"}},
                "X-Inference-Ms": {
                    "description": "forward-pass time of the batch this image ran in",
                    "schema": {"type": "number"},
                },
            },
        },
        **_ERRORS,
    },
    openapi_extra=_IMAGE_BODY,
)
async def segment_image(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    model: ModelName = None,
    output: Annotated[
        Literal["png", "overlay", "json"],
        Query(description="png: single-band mask, pixel = class id; overlay: blended image"),
    ] = "png",
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="overlay opacity")] = 0.5,
    format: Annotated[Literal["png", "jpeg"], Query(description="overlay encoding")] = "png",
    rle: Annotated[bool, Query(description="json: add COCO RLE per class")] = False,
) -> Response:
    """Send one image as multipart field ``image`` or as the raw body (``image/*``). Any size
    and mode (RGB, RGBA, grayscale, palette; EXIF orientation applied); the mask has the
    image's width and height."""
    served = served_model(registry, model, "image")
    assert served.batcher is not None  # image models always have one
    upload = await read_upload(request, "image", settings.max_image_bytes)
    # Refused before decoding, so a refusal costs next to nothing under load. (The body is
    # read first: answering mid-upload would reset the connection of a client still sending.)
    if not served.batcher.has_room():
        raise overloaded(settings, OverloadedError("the queue is full"))
    check_media_type(upload.media_type, IMAGE_MEDIA_TYPES, "an image")
    rgb = await run_in_threadpool(_decode, upload.data, settings.max_pixels)
    prepared = await run_in_threadpool(prepare_image, rgb, settings.max_side)
    try:
        future = served.batcher.submit(prepared.pixels)
    except OverloadedError as error:
        raise overloaded(settings, error) from None
    try:
        result = await asyncio.wait_for(asyncio.wrap_future(future), settings.request_timeout_s)
    except TimeoutError:
        future.cancel()
        raise timed_out(settings) from None
    inference_ms = result.seconds * 1e3
    info = served.info

    def render() -> tuple[bytes, str]:
        mask = labels_from_logits(result.output, prepared.scaled, prepared.size)
        if output == "json":
            return orjson.dumps(image_json(mask, info, inference_ms, rle=rle)), "application/json"
        if output == "overlay":
            return encode_overlay_image(rgb, mask, info.palette, alpha, format), f"image/{format}"
        return encode_mask_png(mask, info.palette), "image/png"

    body, media_type = await run_in_threadpool(render)
    headers = {
        "X-Model": info.name,
        "X-Inference-Ms": f"{inference_ms:.2f}",
        "X-Batch-Size": str(result.batch_size),
    }
    return Response(body, media_type=media_type, headers=headers)
