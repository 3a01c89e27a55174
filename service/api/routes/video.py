"""POST /v1/segment/video: a clip in (mp4, webm, avi, mov, gif), per-frame masks out."""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from ...backends import ModelInfo
from ...batching import OverloadedError
from ...codecs import blend_overlay
from ...core.config import Settings
from ...outputs import class_entries
from ...pipeline import ClipSegmentation, class_statistics, segment_clip
from ...schemas import ClipSegmentation as ClipSegmentationSchema
from ...video import (
    MEDIA_TYPES,
    DecodedVideo,
    VideoDecodeError,
    VideoTooLargeError,
    decode_video,
    encode_mask_zip,
    encode_overlay_video,
)
from ..deps import ApiKey, RegistryDep, SettingsDep
from ..errors import ApiError
from ..media import check_media_type
from ..upload import read_upload
from .segment import _ERRORS, ModelName, overloaded, served_model, timed_out

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["segmentation"], dependencies=[ApiKey])

_VIDEO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {"video": {"type": "string", "format": "binary"}},
                }
            },
            "video/mp4": {"schema": {"type": "string", "format": "binary"}},
            "image/gif": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


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


def _clip_json(result: ClipSegmentation, info: ModelInfo, fps: float) -> dict[str, object]:
    masks = result.masks
    frames = [
        {
            "index": index,
            "classes": [
                {"id": s["id"], "pixels": s["pixels"], "fraction": s["fraction"]}
                for s in class_statistics(mask, info.classes)
            ],
        }
        for index, mask in enumerate(masks)
    ]
    return {
        "model": info.name,
        "width": int(masks.shape[2]),
        "height": int(masks.shape[1]),
        "frame_count": int(masks.shape[0]),
        "fps": float(fps),
        "inference_ms": round(result.inference_ms, 3),
        "window": result.window,
        "overlap": result.overlap,
        "classes": class_entries(masks, info),
        "frames": frames,
    }


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
        **_ERRORS,
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
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="overlay opacity")] = 0.5,
    format: Annotated[Literal["mp4", "gif"], Query(description="overlay container")] = "mp4",
) -> Response:
    """Send a clip as multipart field ``video`` (or the raw body). It is decoded in memory,
    capped in frames and resolution, and segmented by a CCNet3D model over overlapping
    windows of its clip length."""
    served = served_model(registry, model, "video")
    upload = await read_upload(request, "video", settings.max_video_bytes)
    check_media_type(upload.media_type, frozenset(MEDIA_TYPES), "a video clip")
    assert served.clips is not None  # video models always have one
    if not served.clips.has_room():  # refused before the (costly) decode
        raise overloaded(settings, OverloadedError("the clip queue is full"))
    clip = await run_in_threadpool(_decode, upload.data, settings)
    job = functools.partial(
        segment_clip,
        served.backend,
        clip.frames,
        max_side=settings.max_video_side,
        overlap=settings.video_overlap,
    )
    try:
        future = served.clips.submit(job)
    except OverloadedError as error:
        raise overloaded(settings, error) from None
    try:
        result = await asyncio.wait_for(asyncio.wrap_future(future), settings.request_timeout_s)
    except TimeoutError:
        future.cancel()
        raise timed_out(settings) from None
    info = served.info

    def render() -> tuple[bytes, str]:
        if output == "json":
            return orjson.dumps(_clip_json(result, info, clip.fps)), "application/json"
        if output == "overlay":
            blended = blend_overlay(clip.frames, result.masks, info.palette, alpha)
            media = "video/mp4" if format == "mp4" else "image/gif"
            return encode_overlay_video(blended, clip.fps, format), media
        extra = {"model": info.name, "classes": info.classes, "fps": clip.fps}
        return encode_mask_zip(result.masks, info.palette, extra=extra), "application/zip"

    body, media_type = await run_in_threadpool(render)
    headers = {
        "X-Model": info.name,
        "X-Inference-Ms": f"{result.inference_ms:.2f}",
        "X-Frame-Count": str(result.masks.shape[0]),
    }
    return Response(body, media_type=media_type, headers=headers)
