"""POST /v1/segment/video: a clip in (mp4, webm, avi, mov, gif), per-frame masks out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from ccnet.inference.render import ClipOutput, ClipOverlayFormat, RenderOptions, render_clip
from ccnet.service.api.acceptance import accept_clip
from ccnet.service.api.deps import ApiKey, KnownQuery, VideoModelDep
from ccnet.service.api.errors import ApiError
from ccnet.service.api.params import ERROR_RESPONSES, OverlayAlpha, upload_body
from ccnet.service.schemas import ClipSegmentation as ClipSegmentationSchema

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["segmentation"], dependencies=[ApiKey, KnownQuery])

_VIDEO_BODY = upload_body("video", ("video/mp4", "image/gif"))


@router.post(
    "/segment/video",
    summary="Segment a video clip",
    response_class=Response,
    responses={
        200: {
            "model": ClipSegmentationSchema,
            "description": "a zip of mask PNGs (default), JSON statistics, or the overlaid clip",
            "content": {
                "application/zip": {},
                "video/mp4": {},
                "image/gif": {},
            },
        },
        **ERROR_RESPONSES,
    },
    openapi_extra=_VIDEO_BODY,
)
async def segment_video(
    request: Request,
    served: VideoModelDep,
    output: Annotated[
        ClipOutput,
        Query(description="zip: one mask PNG per frame; overlay: the clip with class colours"),
    ] = "zip",
    alpha: OverlayAlpha = 0.5,
    format: Annotated[ClipOverlayFormat, Query(description="overlay container")] = "mp4",
    legend: Annotated[bool, Query(description="overlay: draw a legend of the classes")] = False,
    masks: Annotated[
        bool, Query(description="json: each frame also carries its mask as `mask_png`")
    ] = False,
    frames: Annotated[
        bool,
        Query(description="json: each frame also carries the decoded input as `frame_jpeg`"),
    ] = False,
) -> Response:
    """Send a clip as multipart field ``video`` (or the raw body). It is decoded in memory,
    capped in frames and resolution, and segmented by a CCNet3D model over overlapping
    windows of its clip length.

    ``output=json&masks=true&frames=true`` answers with everything a viewer needs (the
    statistics, every mask, every frame as the model saw it) in one inference: the demo page
    draws the overlay at any opacity and writes the masks' zip from it."""
    info = served.info
    if (masks or frames) and output != "json":
        raise ApiError(
            422,
            "validation_error",
            f"masks= and frames= add to output=json; output={output} does not take them",
        )
    options = RenderOptions(
        alpha=alpha, clip_format=format, legend=legend, clip_masks=masks, clip_frames=frames
    )
    # frames ride in the answer as JPEG and base64 of every frame: budgeted as an overlay
    cost_as = "overlay" if frames else output
    async with accept_clip(request, served, cost_as) as accepted:
        work, clip = accepted.work, accepted.clip
        result = await accepted.submit(
            lambda deadline: served.submit_clip(clip.frames, deadline, claimed=True)
        )

        def render() -> tuple[bytes, str]:
            rendered = render_clip(output, clip.frames, clip.fps, result, info, options)
            return rendered.body, rendered.media_type

        body, media_type = await work.run(render, pool=work.state.encoders)
    headers = {
        "X-Model": info.name,
        "X-Inference-Ms": f"{result.inference_ms:.2f}",
        "X-Frame-Count": str(result.masks.shape[0]),
    }
    return Response(body, media_type=media_type, headers=headers)
