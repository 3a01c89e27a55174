"""POST /v1/segment/video: a clip in (mp4, webm, avi, mov, gif), per-frame masks out."""

from __future__ import annotations

import functools
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from ...codecs import blend_overlay
from ...core.config import Settings
from ...outputs import clip_json, clip_mask_zip
from ...pipeline import segment_clip
from ...schemas import ClipSegmentation as ClipSegmentationSchema
from ...video import (
    MEDIA_TYPES,
    DecodedVideo,
    VideoDecodeError,
    VideoTooLargeError,
    decode_video,
    encode_overlay_video,
)
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
from ..media import check_media_type
from ..upload import read_upload

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["segmentation"], dependencies=[ApiKey])
_VIDEO_MEDIA_TYPES = frozenset(MEDIA_TYPES)

_VIDEO_BODY = upload_body("video", ("video/mp4", "image/gif"))


def _decode(data: bytes, settings: Settings) -> DecodedVideo:
    try:
        return decode_video(
            data,
            max_frames=settings.max_frames,
            max_pixels=settings.max_video_pixels,
            max_total_pixels=settings.max_clip_pixels,
        )
    except VideoTooLargeError as error:
        raise ApiError(413, "video_too_large", str(error)) from None
    except VideoDecodeError as error:
        raise ApiError(400, "invalid_video", str(error)) from None


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
    registry: RegistryDep,
    settings: SettingsDep,
    model: ModelName = None,
    output: Annotated[
        Literal["zip", "json", "overlay"],
        Query(description="zip: one mask PNG per frame; overlay: the clip with class colours"),
    ] = "zip",
    alpha: OverlayAlpha = 0.5,
    format: Annotated[Literal["mp4", "gif"], Query(description="overlay container")] = "mp4",
) -> Response:
    """Send a clip as multipart field ``video`` (or the raw body). It is decoded in memory,
    capped in frames and resolution, and segmented by a CCNet3D model over overlapping
    windows of its clip length."""
    served = served_model(registry, model, "video")
    upload = await read_upload(request, "video", settings.max_video_bytes)
    check_media_type(upload.media_type, _VIDEO_MEDIA_TYPES, "a video clip")
    assert served.clips is not None  # video models always have one
    refuse_if_full(served.clips, settings)
    clip = await run_in_threadpool(_decode, upload.data, settings)
    job = functools.partial(
        segment_clip,
        served.backend,
        clip.frames,
        max_side=settings.max_video_side,
        overlap=settings.video_overlap,
    )
    result = await run_queued(served.clips, job, settings)
    info = served.info

    def render() -> tuple[bytes, str]:
        if output == "json":
            return orjson.dumps(clip_json(result, info, clip.fps)), "application/json"
        if output == "overlay":
            blended = blend_overlay(clip.frames, result.masks, info.palette, alpha)
            media = "video/mp4" if format == "mp4" else "image/gif"
            return encode_overlay_video(blended, clip.fps, format), media
        return clip_mask_zip(result, info, clip.fps), "application/zip"

    body, media_type = await run_in_threadpool(render)
    headers = {
        "X-Model": info.name,
        "X-Inference-Ms": f"{result.inference_ms:.2f}",
        "X-Frame-Count": str(result.masks.shape[0]),
    }
    return Response(body, media_type=media_type, headers=headers)
