"""POST /v1/segment: one image in, its segmentation out (mask PNG, overlay or JSON)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from ccnet.inference.render import ImageOutput, OverlayFormat, RenderOptions, render_image
from ccnet.service.api.acceptance import accept_image
from ccnet.service.api.deps import ApiKey, ImageModelDep, KnownQuery
from ccnet.service.api.params import ERROR_RESPONSES, OverlayAlpha, upload_body
from ccnet.service.schemas import ImageSegmentation

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["segmentation"], dependencies=[ApiKey, KnownQuery])

_IMAGE_BODY = upload_body("image", ("image/png", "image/jpeg"))


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
    served: ImageModelDep,
    output: Annotated[
        ImageOutput,
        Query(description="png: single-band mask, pixel = class id; overlay: blended image"),
    ] = "png",
    alpha: OverlayAlpha = 0.5,
    format: Annotated[OverlayFormat, Query(description="overlay encoding")] = "png",
    rle: Annotated[bool, Query(description="json: add COCO RLE per class")] = False,
    legend: Annotated[bool, Query(description="overlay: draw a legend of the classes")] = False,
) -> Response:
    """Send one image as multipart field ``image`` or as the raw body (``image/*``). Any size
    and mode (RGB, RGBA, grayscale, palette; EXIF orientation applied); the mask has the
    image's width and height."""
    info = served.info
    options = RenderOptions(alpha=alpha, image_format=format, rle=rle, legend=legend)
    async with accept_image(request, served, output) as accepted:
        work, rgb = accepted.work, accepted.rgb
        segmenter = served.segmenter
        _, prepared = await work.run(lambda: segmenter.prepare(rgb, size=accepted.size))
        result = await work.queue(lambda deadline: served.batcher.submit(prepared.pixels, deadline))
        inference_ms = result.seconds * 1e3

        def render() -> tuple[bytes, str]:
            mask = segmenter.finish(rgb, prepared, result.output, inference_ms).mask
            rendered = render_image(output, rgb, mask, info, inference_ms, options)
            return rendered.body, rendered.media_type

        body, media_type = await work.run(render, pool=work.state.encoders)
    headers = {
        "X-Model": info.name,
        "X-Inference-Ms": f"{inference_ms:.2f}",
        "X-Batch-Size": str(result.batch_size),
    }
    return Response(body, media_type=media_type, headers=headers)
