"""POST /v1/segment: one image in, its segmentation out (mask PNG, overlay or JSON)."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from ...codecs import ImageDecodeError, ImageTooLargeError, decode_image, encode_mask_png
from ...outputs import encode_overlay_image, image_json
from ...pipeline import labels_from_logits, prepare_image
from ...schemas import ImageSegmentation
from ..deps import ApiKey, RegistryDep, SettingsDep
from ..errors import ApiError
from ..inference import (
    ERROR_RESPONSES,
    ModelName,
    OverlayAlpha,
    refuse_if_full,
    run_queued,
    served_model,
    upload_body,
)
from ..media import IMAGE_MEDIA_TYPES, check_media_type
from ..upload import read_upload

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["segmentation"], dependencies=[ApiKey])

_IMAGE_BODY = upload_body("image", ("image/png", "image/jpeg"))


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
        **ERROR_RESPONSES,
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
    alpha: OverlayAlpha = 0.5,
    format: Annotated[Literal["png", "jpeg"], Query(description="overlay encoding")] = "png",
    rle: Annotated[bool, Query(description="json: add COCO RLE per class")] = False,
) -> Response:
    """Send one image as multipart field ``image`` or as the raw body (``image/*``). Any size
    and mode (RGB, RGBA, grayscale, palette; EXIF orientation applied); the mask has the
    image's width and height."""
    served = served_model(registry, model, "image")
    assert served.batcher is not None  # image models always have one
    # The body is read before a full queue is refused: answering mid-upload would reset the
    # connection of a client still sending.
    upload = await read_upload(request, "image", settings.max_image_bytes)
    refuse_if_full(served.batcher, settings)
    check_media_type(upload.media_type, IMAGE_MEDIA_TYPES, "an image")
    rgb = await run_in_threadpool(_decode, upload.data, settings.max_pixels)
    prepared = await run_in_threadpool(prepare_image, rgb, settings.max_side)
    result = await run_queued(served.batcher, prepared.pixels, settings)
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
