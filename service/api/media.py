"""Which declared media types each endpoint accepts (415 for the rest).

A missing type or ``application/octet-stream`` is accepted and the bytes decide; an explicit
type that is not an image (or not a clip) is refused before any decoding.
"""

from __future__ import annotations

from ccnet.inference.codecs import IMAGE_MEDIA_TYPES  # beside its decoder
from ccnet.service.api.errors import ApiError

__all__ = ["IMAGE_MEDIA_TYPES", "check_media_type"]

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
