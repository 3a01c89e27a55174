"""Reading an uploaded file from a request: streamed, bounded, and parsed as it arrives.

Both a multipart form (field ``image`` or ``video``) and a raw body are accepted. A declared
``Content-Length`` over the limit is refused before reading; otherwise the body is counted
while it streams and refused as soon as it passes the limit. A multipart body is fed to
python-multipart's streaming parser chunk by chunk, as it arrives, with limits on the number
of parts, on part headers and on every part other than the file, so no body can make the
event loop parse for long (a body of two million empty parts fails at its ninth) or make the
server keep more than the limits. Received bytes are reserved from the memory budget as they
arrive (``service.admission``).

An upload cannot squat on the budget: the whole body must arrive within ``timeout_s`` (408,
however steadily it trickles), one upload may hold at most ``max_held`` bytes of the budget
(the body limit is lowered to fit), and one client's uploads together at most its share
(``service.tenancy``; 503 past it).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from fastapi import Request
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from ccnet.service.admission import Reservation
from ccnet.service.api.errors import ApiError
from ccnet.service.tenancy import ClientShares

__all__ = ["HELD_PER_BYTE", "Tenant", "Upload", "UploadLimits", "read_upload", "too_large"]

_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file
_MAX_PART_HEADERS = 8
# type "/" subtype, RFC 9110 tokens; anything else in Content-Type is malformed
_MEDIA_TYPE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+/[a-z0-9!#$%&'*+.^_`|~-]+$")
# bytes held per received byte: the chunks (or the part's buffer) and the joined ``bytes``
HELD_PER_BYTE = 2


@dataclass(frozen=True)
class Upload:
    """The uploaded bytes and what the client said they are."""

    data: bytes
    # lower case, without parameters; "" when not given; a malformed value is kept as sent
    # (lower case) so that the media-type check refuses it
    media_type: str
    filename: str | None = None


@dataclass(frozen=True)
class UploadLimits:
    """How large an upload and its multipart envelope may be."""

    max_bytes: int  # the file itself
    max_parts: int
    max_field_bytes: int  # any other part, and each part's headers
    timeout_s: float | None = None  # the whole body, from its first byte awaited
    max_held: int | None = None  # bytes of the budget the upload may hold

    def __post_init__(self) -> None:
        if self.max_held is not None:
            # a body limit the budget share cannot hold would only ever end in a 503
            envelope = _MULTIPART_OVERHEAD + self.max_parts * self.max_field_bytes
            fits = max(1, self.max_held // HELD_PER_BYTE - envelope)
            object.__setattr__(self, "max_bytes", min(self.max_bytes, fits))


@dataclass(frozen=True)
class Tenant:
    """Whose upload this is, and the per-client ledger it counts against."""

    client: str
    shares: ClientShares


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the upload is larger than the limit of {limit} bytes"
    )


class _MalformedError(Exception):
    """The multipart body breaks a rule; answered 400 or 413."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _invalid(message: str) -> _MalformedError:
    return _MalformedError(
        ApiError(400, "invalid_multipart", f"the multipart body is malformed: {message}")
    )


class _FormReader:
    """Streams a multipart body through python-multipart, keeping only the part ``field``."""

    def __init__(self, boundary: bytes, field: str, limits: UploadLimits) -> None:
        self.field = field
        self.limits = limits
        self.parts = 0
        self.found: tuple[bytearray, str, str | None] | None = None
        self.other_files: list[str] = []  # names of file parts other than ``field``
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._data: bytearray | None = None  # the wanted part's bytes, while it streams
        self._other_bytes = 0
        callbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_part,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }
        try:
            self.parser = MultipartParser(
                boundary,
                callbacks,  # type: ignore[arg-type]
                max_header_count=_MAX_PART_HEADERS,
                max_header_size=limits.max_field_bytes,
            )
        except Exception as error:  # python-multipart's FormParserError: a bad boundary
            raise _invalid(str(error)) from None

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except _MalformedError:
            raise
        except Exception as error:  # python-multipart raises its own error types
            raise _invalid(str(error)) from None

    def finish(self) -> tuple[bytearray, str, str | None]:
        try:
            self.parser.finalize()
        except Exception as error:
            raise _invalid(str(error)) from None
        if self.parser.state != MultipartState.END:
            raise _invalid("the body ends before the closing boundary")
        if self.found is None:
            raise _MalformedError(self._missing_field())
        return self.found

    def _missing_field(self) -> ApiError:
        got = ", ".join(repr(name) for name in self.other_files)
        return ApiError(
            422,
            "missing_field",
            f"the form has no file field named {self.field!r}"
            + (f" (got {got}): send it as -F {self.field}=@FILE" if got else ""),
        )

    # python-multipart callbacks: each does a bounded amount of work per call
    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise _invalid(f"more than {self.limits.max_parts} parts")
        self._headers = {}
        self._header_bytes = 0
        self._data = None

    def _header_field(self, buf: bytes, start: int, end: int) -> None:
        self._grow_headers(end - start)
        self._header_name.extend(buf[start:end])

    def _header_value_part(self, buf: bytes, start: int, end: int) -> None:
        self._grow_headers(end - start)
        self._header_value.extend(buf[start:end])

    def _grow_headers(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_field_bytes:
            raise _invalid(f"part headers longer than {self.limits.max_field_bytes} bytes")

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if options.get(b"filename") is not None and name != self.field:
            self.other_files.append(name)  # the file, sent under another field name
        if name == self.field and self.found is None:
            media_type, _ = parse_options_header(self._headers.get(b"content-type", b""))
            filename = options.get(b"filename")
            self._data = bytearray()
            self.found = (
                self._data,
                media_type.decode("latin-1").lower(),
                filename.decode("utf-8", "replace") if filename else None,
            )

    def _part_data(self, buf: bytes, start: int, end: int) -> None:
        if self._data is not None:
            self._data.extend(buf[start:end])
            if len(self._data) > self.limits.max_bytes:
                raise _MalformedError(too_large(self.limits.max_bytes))
            return
        self._other_bytes += end - start
        if self._other_bytes > self.limits.max_field_bytes:
            if self.other_files:  # a file under the wrong name, not an oversized text field
                raise _MalformedError(self._missing_field())
            raise _MalformedError(
                ApiError(
                    413,
                    "payload_too_large",
                    f"the form's other fields hold more than {self.limits.max_field_bytes} bytes",
                )
            )


def _media_type(header: str | None) -> tuple[str, dict[bytes, bytes]]:
    if header is None or not header.strip():
        return "", {}
    media_type, options = parse_options_header(header)
    media = media_type.decode("latin-1").strip().lower()
    if not _MEDIA_TYPE.match(media):
        return header.strip().lower() or "malformed", {}
    return media, options


async def read_upload(
    request: Request,
    field: str,
    limits: UploadLimits,
    reservation: Reservation,
    tenant: Tenant | None = None,
) -> Upload:
    """The file sent as multipart field ``field`` or as the raw body.

    Raises:
        ApiError: 413 over the limits, 400 empty or malformed, 422 a form without ``field``,
            408 not arrived within ``limits.timeout_s``.
        OverBudgetError: the memory budget cannot hold what arrives.
        ClientShareError: the client's uploads hold their whole share of the budget.
        ClientDisconnect: the client went away mid-upload.
    """
    held = [0]  # bytes the client's ledger holds for this upload, returned at the end
    try:
        async with asyncio.timeout(limits.timeout_s):
            return await _read(request, field, limits, reservation, tenant, held)
    except TimeoutError:
        raise ApiError(
            408, "upload_timeout", f"the upload did not arrive within {limits.timeout_s:g} s"
        ) from None
    finally:
        if tenant is not None:
            tenant.shares.give(tenant.client, held[0])


async def _read(
    request: Request,
    field: str,
    limits: UploadLimits,
    reservation: Reservation,
    tenant: Tenant | None,
    held: list[int],
) -> Upload:
    media, options = _media_type(request.headers.get("content-type"))
    form: _FormReader | None = None
    limit = limits.max_bytes
    if media == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise ApiError(400, "invalid_multipart", "multipart/form-data without a boundary")
        limit = limits.max_bytes + _MULTIPART_OVERHEAD + limits.max_parts * limits.max_field_bytes
        try:
            form = _FormReader(boundary, field, limits)
        except _MalformedError as malformed:
            raise malformed.error from None
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limits.max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            size += len(chunk)
            if size > limit:
                raise too_large(limits.max_bytes)
            nbytes = HELD_PER_BYTE * len(chunk)
            if tenant is not None:
                tenant.shares.take(tenant.client, nbytes)  # ClientShareError past the share
                held[0] += nbytes
            reservation.grow(nbytes, "the upload")
            if form is None:
                chunks.append(chunk)
            else:
                form.write(chunk)
        if form is None:
            upload = Upload(b"".join(chunks), media)
        else:
            data, part_media, filename = form.finish()
            upload = Upload(bytes(data), part_media, filename)
    except _MalformedError as malformed:
        raise malformed.error from None
    if not upload.data:
        raise ApiError(400, "empty_upload", f"the {field} is empty (zero bytes)")
    return upload
