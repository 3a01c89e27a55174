"""Reading an uploaded file from a request, in memory, with the size limit enforced early.

Both a multipart form (field ``image`` or ``video``) and a raw body are accepted. A declared
``Content-Length`` over the limit is refused before reading; a body without one is counted
while it streams and refused as soon as it passes the limit, so a client cannot make the
server buffer more than the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ApiError

__all__ = ["Upload", "read_upload"]

_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file


@dataclass(frozen=True)
class Upload:
    """The uploaded bytes and what the client said they are."""

    data: bytes
    media_type: str  # lower case, without parameters; "" when not given
    filename: str | None = None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the upload is larger than the limit of {limit} bytes"
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_multipart(body: bytes, boundary: bytes, field: str) -> Upload | None:
    """The part named ``field``, or None."""
    parts: list[dict[str, object]] = []
    current: dict[str, object] = {}
    header_name = bytearray()
    header_value = bytearray()
    data = bytearray()

    def on_part_begin() -> None:
        current.clear()
        current["headers"] = {}
        data.clear()

    def on_header_field(buf: bytes, start: int, end: int) -> None:
        header_name.extend(buf[start:end])

    def on_header_value(buf: bytes, start: int, end: int) -> None:
        header_value.extend(buf[start:end])

    def on_header_end() -> None:
        current["headers"][bytes(header_name).lower()] = bytes(header_value)  # type: ignore[index]
        header_name.clear()
        header_value.clear()

    def on_part_data(buf: bytes, start: int, end: int) -> None:
        data.extend(buf[start:end])

    def on_part_end() -> None:
        parts.append({**current, "data": bytes(data)})

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as error:  # python-multipart raises its own error types
        raise ApiError(
            400, "invalid_multipart", f"the multipart body is malformed: {error}"
        ) from None
    for part in parts:
        headers: dict[bytes, bytes] = part["headers"]  # type: ignore[assignment]
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        if options.get(b"name", b"").decode("utf-8", "replace") != field:
            continue
        media_type, _ = parse_options_header(headers.get(b"content-type", b""))
        filename = options.get(b"filename")
        return Upload(
            part["data"],  # type: ignore[arg-type]
            media_type.decode("latin-1").lower(),
            filename.decode("utf-8", "replace") if filename else None,
        )
    return None


async def read_upload(request: Request, field: str, limit: int) -> Upload:
    """The file sent as multipart field ``field`` or as the raw body.

    Raises:
        ApiError: 413 over ``limit``, 400 empty or malformed, 422 a form without ``field``.
    """
    content_type = request.headers.get("content-type", "")
    media_type, options = parse_options_header(content_type)
    media = media_type.decode("latin-1").lower()
    if media == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise ApiError(400, "invalid_multipart", "multipart/form-data without a boundary")
        body = await _read_body(request, limit + _MULTIPART_OVERHEAD)
        upload = _parse_multipart(body, boundary, field)
        if upload is None:
            raise ApiError(422, "missing_field", f"the form has no file field named {field!r}")
        if len(upload.data) > limit:
            raise _too_large(limit)
    else:
        upload = Upload(await _read_body(request, limit), media)
    if not upload.data:
        raise ApiError(400, "empty_upload", f"the {field} is empty (zero bytes)")
    return upload
