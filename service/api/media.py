"""Which declared media types each endpoint accepts (415 for the rest).

A missing type or ``application/octet-stream`` is accepted and the bytes decide; an explicit
type that is not an image (or not a clip) is refused before any decoding.
"""

from __future__ import annotations

from ccnet.inference.codecs import IMAGE_MEDIA_TYPES  # beside its decoder
from ccnet.service.api.errors import ApiError

__all__ = ["IMAGE_MEDIA_TYPES", "check_media_type", "refuse_clip", "refuse_still_image"]

_UNDECLARED = frozenset({"", "application/octet-stream"})


def check_media_type(media_type: str, accepted: frozenset[str] | set[str], what: str) -> None:
    """415 unless ``media_type`` is undeclared or one of ``accepted``."""
    if media_type in _UNDECLARED or media_type in accepted:
        return
    listed = ", ".join(sorted(accepted))
    raise ApiError(
        415,
        "unsupported_media_type",
        f"{media_type!r} is not accepted as {what}; send one of: {listed}",
    )


def _still_image_format(data: bytes | bytearray) -> str | None:
    """The still-image format the bytes start with (GIF is not one: it may be a clip)."""
    head = bytes(data[:12])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG"):
        return "PNG"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _clip_format(data: bytes | bytearray) -> str | None:
    """The video container the bytes start with (GIF excepted: an image endpoint takes it)."""
    head = bytes(data[:12])
    if head[4:8] == b"ftyp":
        return "MP4/MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM/Matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "AVI"
    return None


def refuse_still_image(data: bytes | bytearray, media_type: str) -> None:
    """415 ``not_a_clip`` for a still image sent to the clip endpoint: said before any
    budgeting, which would size it as the longest clip the limits allow and answer 413."""
    found = _still_image_format(data)
    if found is None and media_type.startswith("image/") and media_type != "image/gif":
        found = media_type
    if found is not None:
        raise ApiError(
            415, "not_a_clip", f"a still image ({found}), not a clip: send it to /v1/segment"
        )


def refuse_clip(data: bytes | bytearray, media_type: str) -> None:
    """415 ``not_an_image`` for a video sent to the image endpoint."""
    found = _clip_format(data)
    if found is None and media_type.startswith("video/"):
        found = media_type
    if found is not None:
        raise ApiError(
            415,
            "not_an_image",
            f"a video clip ({found}), not an image: send it to /v1/segment/video",
        )
