"""Video decoding and overlay/mask encoding for the segmentation service, all in memory.

Decoding is defensive for the same reason as ``codecs.decode_image``: uploads come from
strangers. PyAV's bundled FFmpeg reads the bytes from a ``BytesIO`` (no temporary files, no system
ffmpeg). The frame size is checked from the stream header before any frame is decoded, FFmpeg's own
``max_pixels`` guard is armed for the probe and the decoder (a GIF can declare a 20000×20000
canvas in a few hundred bytes), and the frame count is checked from the header and again while
decoding, so an over-long clip stops at the first frame past the limit.

Still images are refused: FFmpeg opens a PNG or JPEG as a one-frame clip through its image
demuxers (``png_pipe``, ``image2``, …), but the image endpoint is the place for those. GIF and APNG
have their own demuxers and are accepted, a single-frame GIF as a one-frame clip.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import av.error
import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_FPS",
    "MEDIA_TYPES",
    "OPEN_OPTIONS",
    "VIDEO_CODECS",
    "VIDEO_DEMUXERS",
    "VIDEO_SUFFIXES",
    "DecodedVideo",
    "VideoDecodeError",
    "VideoTooLargeError",
    "decode_video",
    "encode_overlay_video",
]

# Accepted upload media types → short name; anything else is answered with 415.
MEDIA_TYPES: dict[str, str] = {
    "video/mp4": "mp4",
    "video/x-m4v": "mp4",  # what Safari and iOS send for .m4v
    "video/quicktime": "mov",
    "video/3gpp": "3gp",  # older Android phones record 3GP
    "video/webm": "webm",
    "video/x-matroska": "mkv",
    "video/x-msvideo": "avi",
    "video/avi": "avi",
    "video/msvideo": "avi",
    "video/ogg": "ogg",
    "video/mpeg": "mpeg",
    "image/gif": "gif",
    "image/apng": "apng",
}

# File suffixes ``ccnet predict`` treats as clips (an animated .gif is a clip too).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".3gp", ".webm", ".mkv", ".avi", ".ogv", ".mpeg", ".mpg")

DEFAULT_FPS = 10.0  # when neither the container nor the frames say; GIF viewers assume the same
_MAX_PLAUSIBLE_FPS = 1000.0  # a larger rate comes from broken timestamps, not from a camera
_GIF_TICKS_PER_SECOND = 100  # GIF frame delays are whole centiseconds
_GIF_MIN_DELAY = 2  # browsers replace 0 and 1 centisecond delays with 10
# The FFmpeg demuxers and decoders allowed to read input (FFmpeg's format_whitelist and
# codec_whitelist): the containers and codecs phones, browsers and encoders produce. Without
# them FFmpeg probes every demuxer and decoder it was built with, each a parser exposed to
# strangers' bytes. The still-image demuxers stay so that a PNG is named as such (refused).
VIDEO_DEMUXERS = ("mov", "matroska", "avi", "gif", "apng", "ogg", "mpeg")
VIDEO_CODECS = (
    "h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "h263", "mpeg1video", "mpeg2video",
    "mjpeg", "theora", "gif", "apng",
)  # fmt: skip
_STILL_IMAGE_PROBES = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe")
# av.open options: the allow-lists above
OPEN_OPTIONS = {
    "format_whitelist": ",".join(VIDEO_DEMUXERS + _STILL_IMAGE_PROBES),
    "codec_whitelist": ",".join(VIDEO_CODECS),
}
_STILL_IMAGE_DEMUXERS = ("image2",)  # plus every "*_pipe" demuxer (png_pipe, jpeg_pipe, …)


class VideoDecodeError(ValueError):
    """The bytes are not a decodable clip."""


class VideoTooLargeError(ValueError):
    """The clip has more frames, or larger frames, than allowed."""


@dataclass(frozen=True)
class DecodedVideo:
    """A decoded clip: every frame of its first video stream (cover art aside), as 8-bit RGB."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    container: str  # FFmpeg's demuxer name, e.g. "gif" or "mov,mp4,m4a,3gp,3g2,mj2"


def decode_video(
    data: bytes, *, max_frames: int, max_pixels: int, max_total_pixels: int | None = None
) -> DecodedVideo:
    """Decode a clip (mp4, mov, webm, mkv, avi, GIF, …) to RGB frames, unresized.

    Args:
        data: the uploaded bytes.
        max_frames: refuse clips with more frames; decoding stops at the first frame past it.
        max_pixels: refuse clips whose frames have more pixels (width × height).
        max_total_pixels: refuse clips with more pixels in all (frames × width × height), a
            cap on the decoded clip's memory (3 bytes per pixel); checked while decoding.

    Raises:
        VideoTooLargeError: over ``max_frames`` or ``max_pixels``.
        VideoDecodeError: empty, corrupt, truncated, a still image, no video stream, no frames.
    """
    if max_frames < 1 or max_pixels < 1:
        raise ValueError(f"limits must be positive, got {max_frames=} and {max_pixels=}")
    if not data:
        raise VideoDecodeError("empty input: zero bytes")
    _check_gif_screen(data, max_pixels)
    try:
        container = av.open(
            io.BytesIO(data),
            # arms FFmpeg's own size guard for the frames that probing decodes
            options={**OPEN_OPTIONS, "max_pixels": str(max_pixels)},
            metadata_errors="replace",  # a mis-encoded title must not fail the upload
        )
    except av.error.ArgumentError:  # what FFmpeg answers for a container off the allow-list
        raise VideoDecodeError(
            "not a video in a container we read (mp4/mov, webm/mkv, avi, gif, apng, ogg, mpeg)"
        ) from None
    except av.error.FFmpegError as error:
        raise VideoDecodeError(f"not a decodable video: {_describe(error)}") from None
    try:
        with container:
            return _decode_container(container, max_frames, max_pixels, max_total_pixels)
    except av.error.FFmpegError as error:
        raise VideoDecodeError(f"not a decodable video: {_describe(error)}") from None


def _decode_container(
    container: av.container.InputContainer,
    max_frames: int,
    max_pixels: int,
    max_total_pixels: int | None,
) -> DecodedVideo:
    demuxer = container.format.name
    if demuxer in _STILL_IMAGE_DEMUXERS or demuxer.endswith("_pipe"):
        raise VideoDecodeError(f"a still image ({demuxer}), not a video")
    stream = _video_stream(container)
    width, height = stream.codec_context.width, stream.codec_context.height
    # 0×0 means the header does not say (or FFmpeg's guard refused the probe); the decoder's
    # guard and the per-frame check below still apply
    _check_pixels(width, height, max_pixels, "the stream header declares")
    if stream.frames > max_frames:
        raise VideoTooLargeError(
            f"the clip declares {stream.frames} frames, more than the limit of {max_frames}"
        )
    codec = stream.codec_context.name
    if codec not in VIDEO_CODECS:
        raise VideoDecodeError(
            f"the clip's video codec {codec!r} is not one of {', '.join(VIDEO_CODECS)}"
        )
    stream.codec_context.options = {
        "max_pixels": str(max_pixels),
        "codec_whitelist": OPEN_OPTIONS["codec_whitelist"],
    }

    frames: list[np.ndarray] = []
    seconds = 0.0  # sum of the frame durations, for clips whose rate the container lacks
    try:
        for frame in container.decode(stream):
            if len(frames) == max_frames:
                raise VideoTooLargeError(f"the clip has more than the limit of {max_frames} frames")
            _check_pixels(frame.width, frame.height, max_pixels, "a frame is")
            total = (len(frames) + 1) * frame.width * frame.height
            if max_total_pixels is not None and total > max_total_pixels:
                raise VideoTooLargeError(
                    f"the clip has more than the limit of {max_total_pixels} pixels in all "
                    f"(frames × width × height): {len(frames) + 1} frames of "
                    f"{frame.width}×{frame.height} already exceed it"
                )
            if frames and frames[0].shape[:2] != (frame.height, frame.width):
                first_height, first_width = frames[0].shape[:2]
                raise VideoDecodeError(
                    f"frame size changes mid-clip, from {first_width}×{first_height} "
                    f"to {frame.width}×{frame.height}"
                )
            frames.append(_to_rgb(frame))
            if frame.duration and frame.time_base:
                seconds += float(frame.duration * frame.time_base)
    except av.error.ArgumentError as error:
        if width * height:
            raise
        # FFmpeg's size guard fails with this same bare "Invalid argument" (its reason only
        # goes to the log, which PyAV silences), so say that it may be the cause
        raise VideoDecodeError(
            f"not a decodable video: {_describe(error)}; the header gives no frame size and "
            f"FFmpeg refuses frames over the limit of {max_pixels} pixels, which may be why"
        ) from None
    if not frames:
        raise VideoDecodeError("the video stream has no decodable frames")
    return DecodedVideo(
        frames=np.stack(frames),
        fps=_frame_rate(stream, demuxer, len(frames), seconds),
        container=demuxer,
    )


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    # cover art in an audio file is a one-picture "video" stream; it is not a clip
    streams = [
        stream
        for stream in container.streams.video
        if not stream.disposition & av.stream.Disposition.attached_pic
    ]
    if not streams:
        raise VideoDecodeError("no video stream in the file")
    for stream in streams:
        if stream.codec_context is not None:  # None: FFmpeg has no decoder for its codec
            return stream
    raise VideoDecodeError("FFmpeg has no decoder for the clip's video codec")


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    if any(component.is_alpha for component in frame.format.components):
        # GIF canvases are decoded as BGRA; composite on white as decode_image does
        rgba = frame.to_ndarray(format="rgba").astype(np.uint16)
        alpha = rgba[:, :, 3:]
        rgb = (rgba[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)
    return frame.to_ndarray(format="rgb24")


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise VideoTooLargeError(
            f"{what} {width}×{height} = {width * height} pixels, "
            f"more pixels than the limit of {max_pixels}"
        )


def _check_gif_screen(data: bytes, max_pixels: int) -> None:
    # FFmpeg reports no size for a GIF whose canvas its guard refused, so read the logical
    # screen size from the header itself to answer "too large" rather than "undecodable"
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width = int.from_bytes(data[6:8], "little")
        height = int.from_bytes(data[8:10], "little")
        _check_pixels(width, height, max_pixels, "the GIF header declares")


def _frame_rate(
    stream: av.video.stream.VideoStream, demuxer: str, num_frames: int, seconds: float
) -> float:
    from_durations = num_frames / seconds if seconds > 0 else None
    if demuxer == "gif":
        # each GIF frame carries its own delay, and FFmpeg's average rate for GIF leaves the
        # last frame's delay out
        candidates = [from_durations, stream.average_rate, stream.guessed_rate]
    else:
        candidates = [stream.average_rate, stream.guessed_rate, from_durations]
    for rate in candidates:
        if rate is not None and 0 < rate <= _MAX_PLAUSIBLE_FPS:
            return float(rate)
    return DEFAULT_FPS


def _describe(error: av.error.FFmpegError) -> str:
    # str() of an FFmpeg error leads with "[Errno 1094995529]"; the reason alone reads better
    return error.strerror or str(error)


def encode_overlay_video(frames: np.ndarray, fps: float, fmt: Literal["mp4", "gif"]) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames as an mp4 or an animated, looping GIF.

    mp4 is H.264 (libx264) in yuv420p, which every browser plays; where PyAV's FFmpeg lacks
    libx264 it is MPEG-4 part 2. 4:2:0 chroma cannot describe an odd width or height (H.264
    crops in steps of two), so an odd-sized clip is padded by one row or column that repeats
    the edge: the mp4 decodes to ``H + H % 2`` by ``W + W % 2``.

    GIF keeps the exact size and one GIF frame per input frame (identical neighbours are not
    merged); each frame gets its own 256-colour palette. Delays are whole centiseconds of at
    least 2, so rates above 50 fps play slower than recorded.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be (T, H, W, 3) uint8, got shape {frames.shape} {frames.dtype}"
        )
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must hold at least one 1×1 frame, got shape {frames.shape}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps}")
    if fmt == "mp4":
        return _encode_mp4(frames, fps)
    if fmt == "gif":
        return _encode_gif(frames, fps)
    raise ValueError(f"fmt must be 'mp4' or 'gif', got {fmt!r}")


def _mp4_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    _, height, width, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    codec = _mp4_codec()
    buffer = io.BytesIO()
    # no +faststart: it reopens the output by file name, which a BytesIO has not; players
    # fetch the trailing index with a range request instead
    with av.open(buffer, "w", format="mp4") as container:
        # a denominator of 1001 keeps NTSC rates exact and stays within MPEG-4's 16-bit limit
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            # its default 200 kbit/s smears colour edges; about 0.2 bit per pixel does not
            stream.bit_rate = max(200_000, int(0.2 * stream.width * stream.height * fps))
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _encode_gif(frames: np.ndarray, fps: float) -> bytes:
    _, height, width, _ = frames.shape
    buffer = io.BytesIO()
    time_base = Fraction(1, _GIF_TICKS_PER_SECOND)
    # FFmpeg's GIF encoder rather than Pillow's: Pillow merges identical consecutive frames,
    # which would break the frame-for-frame match with the masks
    with av.open(buffer, "w", format="gif") as container:  # the muxer loops forever by default
        stream = container.add_stream("gif", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "pal8"
        stream.codec_context.time_base = time_base
        pts = -_GIF_MIN_DELAY
        for index, rgb in enumerate(frames):
            frame = _palette_frame(rgb)
            pts = max(round(index * _GIF_TICKS_PER_SECOND / fps), pts + _GIF_MIN_DELAY)
            frame.pts, frame.time_base = pts, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _palette_frame(rgb: np.ndarray) -> av.VideoFrame:
    # fast octree: within a grey level of median cut on photographs, about 100× faster
    quantized = Image.fromarray(rgb).quantize(256, method=Image.Quantize.FASTOCTREE)
    indices = np.asarray(quantized, dtype=np.uint8)
    colours = np.asarray(quantized.getpalette() or [], dtype=np.uint8).reshape(-1, 3)[:256]
    argb = np.zeros((256, 4), dtype=np.uint8)
    argb[: len(colours), 0] = 255  # opaque
    argb[: len(colours), 1:] = colours
    return av.VideoFrame.from_ndarray((indices, argb), format="pal8")
