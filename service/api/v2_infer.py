"""The /v2 inference request through /v1's acceptance path (``api.acceptance``).

The same steps in the same order, each before the work it guards allocates anything:

1. **size**: the body (the JSON header alone may hold ``v2_json_max_bytes``; larger tensors go
   as binary data after it, as tritonclient sends them by default), read within the upload
   deadline and the client's share; then the batch size, each tensor's declared shape against
   the data it came with, and each image's pixels, from the declared shape (``image``) or the
   encoded image's header (``image_bytes``), 413 past the limits;
2. **admission**: the batch's memory cost (``image_cost`` with the model's activations, plus
   the outputs at the size they are returned and their encoding, ``tensor_output_cost``) is
   reserved before any image is decoded or converted; an output asked for as JSON text is
   refused past ``v2_json_max_bytes`` (ask for it as binary data);
3. **media type**: encoded images must be one of the formats we decode (the probe only
   recognises those);
4. **decode**, in the decoding pool.

Parsing the JSON header is charged too (``_JSON_HELD_PER_BYTE``) and bounded by its byte
limit, so no request makes an unbounded Python list.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ccnet.service.api.acceptance import Work, check_image_size, decode_one, image_admission
from ccnet.service.api.errors import ApiError
from ccnet.service.core.config import Settings
from ccnet.service.costs import ImageHeader, json_output_bytes, probe_image, tensor_output_cost
from ccnet.service.served import ServedImageModel

__all__ = ["HEADER_LENGTH", "V2Request", "accept_tensors", "body_limit"]

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUTS = ("image", "image_bytes")
OUTPUTS = ("mask", "logits")
# peak bytes per byte of the JSON header while it is parsed: the text, orjson's objects (an
# 8 B list pointer per value of at least 2 characters, small ints cached), the int64 array
# made from them and its uint8 copy
_JSON_HELD_PER_BYTE = 10


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_inference_request", message)


def body_limit(settings: Settings, header_length: str | None) -> int:
    """Bytes the body may have: a JSON-only body its JSON limit; with binary data a full batch
    of images at the pixel limit as raw UINT8, or at the /v1 upload limit each, whichever is
    larger (the upload's share of the budget lowers it further, ``UploadLimits``)."""
    json_limit = settings.v2_json_max_bytes
    if header_length is None:
        return json_limit
    if not header_length.isdigit() or int(header_length) > json_limit:
        raise ApiError(
            413,
            "payload_too_large",
            f"{HEADER_LENGTH} {header_length[:20]!r}: the JSON header may hold up to "
            f"{json_limit} bytes; send tensors as binary data after it",
        )
    per_image = max(settings.max_pixels * 3, settings.max_image_bytes)
    return settings.max_batch_size * per_image + json_limit


@dataclass(frozen=True)
class V2Request:
    """An accepted inference request: its decoded images and the outputs wanted."""

    id: str | None
    images: list[np.ndarray]  # (H, W, 3) uint8 each, one size
    outputs: dict[str, bool]  # output name -> binary
    input_binary: bool


@dataclass(frozen=True)
class _Parsed:
    """The JSON header, checked for shape, before any tensor is converted or decoded."""

    id: str | None
    name: str  # "image" or "image_bytes"
    shape: list[int]
    data: list[Any] | None  # JSON data
    raw: bytes | None  # binary data
    outputs: dict[str, bool]


def _parse_header(body: bytes, header_length: str | None, max_batch: int) -> _Parsed:
    if header_length is None:
        head, blobs = body, b""
    else:
        split = int(header_length)
        if split > len(body):
            raise invalid(f"{HEADER_LENGTH} {split} is longer than the body")
        head, blobs = body[:split], body[split:]
    try:
        parsed = orjson.loads(head)
    except orjson.JSONDecodeError as error:
        raise invalid(f"the request header is not JSON: {error}") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("inputs"), list):
        raise invalid("the request needs an 'inputs' list")
    inputs = parsed["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict) or inputs[0].get("name") not in INPUTS:
        raise invalid("send exactly one input: 'image' (UINT8 [N,H,W,3]) or 'image_bytes'")
    tensor = inputs[0]
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid(f"input {tensor['name']!r}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    raw = None
    if size is not None:
        if not isinstance(size, int) or size != len(blobs):
            raise invalid(f"binary_data_size {size!r} does not match the {len(blobs)} bytes sent")
        raw = blobs
    elif blobs:
        raise invalid("binary data after the header, but no input declares binary_data_size")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise invalid(f"input {tensor['name']!r}: 'shape' must be a list of sizes")
    if not shape or shape[0] < 1:
        raise invalid("the batch holds no image")
    if shape[0] > max_batch:
        raise ApiError(
            413, "batch_too_large", f"{shape[0]} images, more than the limit of {max_batch}"
        )
    data = tensor.get("data")
    if raw is None and not isinstance(data, list):
        raise invalid(f"input {tensor['name']!r}: 'data' must be a list (or send binary data)")
    request_id = parsed.get("id")
    return _Parsed(
        str(request_id)[:256] if request_id is not None else None,
        tensor["name"],
        shape,
        data if raw is None else None,
        raw,
        _requested_outputs(parsed),
    )


def _requested_outputs(parsed: dict[str, Any]) -> dict[str, bool]:
    parameters = parsed.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid("'parameters' must be an object")
    binary_default = bool(parameters.get("binary_data_output", False))
    requested = parsed.get("outputs")
    if not requested:
        return {"mask": binary_default}
    if not isinstance(requested, list):
        raise invalid("'outputs' must be a list")
    outputs: dict[str, bool] = {}
    for entry in requested:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in OUTPUTS:
            raise invalid(f"unknown output {name!r}; this model has {', '.join(OUTPUTS)}")
        options = entry.get("parameters") or {}
        if not isinstance(options, dict):
            raise invalid(f"output {name!r}: 'parameters' must be an object")
        outputs[name] = bool(options.get("binary_data", binary_default))
    return outputs


# ---------------------------------------------------------------------------- image (UINT8)


def _uint8_header(parsed: _Parsed) -> ImageHeader:
    shape = parsed.shape
    if len(shape) != 4 or shape[3] != 3:
        raise invalid("input 'image' must be UINT8 with shape [N, H, W, 3] (RGB 0..255)")
    if min(shape[1:3]) < 1:
        raise invalid("an image has no pixels")
    count = shape[0] * shape[1] * shape[2] * 3
    if parsed.raw is not None and len(parsed.raw) != count:
        raise invalid(f"input 'image': {len(parsed.raw)} bytes for shape {shape} ({count} values)")
    if parsed.data is not None:
        # checked before conversion: a flat list of exactly the declared count, or one nested
        # list per image (their lengths are checked by the conversion)
        length = len(parsed.data)
        if length not in (count, shape[0]):
            raise invalid(f"input 'image': {length} values for shape {shape} ({count} values)")
    return ImageHeader(width=shape[2], height=shape[1], mode="RGB", format=None)


def _uint8_images(parsed: _Parsed) -> list[np.ndarray]:
    if parsed.raw is not None:
        array = np.frombuffer(parsed.raw, dtype=np.uint8)
    else:
        try:
            values = np.asarray(parsed.data).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            values = np.empty(0, np.float64)  # ragged: refused just below
        if values.dtype.kind not in "iu" and values.size:  # floats, booleans, strings
            raise invalid("input 'image': 'data' must be integers 0..255")
        if values.size != int(np.prod(parsed.shape)):
            raise invalid(f"input 'image': {values.size} values for shape {parsed.shape}")
        if values.size and (values.min() < 0 or values.max() > 255):
            raise invalid("input 'image': UINT8 values lie in 0..255")
        array = values.astype(np.uint8)
    return [np.ascontiguousarray(image) for image in array.reshape(parsed.shape)]


# ---------------------------------------------------------------------------- image_bytes


def _elements(parsed: _Parsed) -> list[bytes]:
    shape = parsed.shape
    if len(shape) not in (1, 2) or shape[1:] not in ([], [1]):
        raise invalid("input 'image_bytes' must be BYTES with shape [N] or [N, 1]")
    count = shape[0]
    if parsed.raw is None:
        data = parsed.data or []
        if len(data) != count:
            raise invalid(f"input 'image_bytes': 'data' must list {count} base64 strings")
        try:
            return [base64.b64decode(item, validate=True) for item in data]
        except (TypeError, ValueError, binascii.Error):
            raise invalid("input 'image_bytes': JSON elements must be base64 strings") from None
    raw, elements, offset = parsed.raw, [], 0
    for _ in range(count):  # the binary form: each element is a 4-byte length, then its bytes
        if offset + 4 > len(raw):
            raise invalid("input 'image_bytes': the binary data ends early")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise invalid("input 'image_bytes': the binary data ends early")
        elements.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise invalid("input 'image_bytes': binary data left over after the elements")
    return elements


def _probe_all(elements: list[bytes], settings: Settings) -> ImageHeader:
    """Every element's header (pixels checked), one size for all; before any decoding."""
    headers = []
    for index, data in enumerate(elements):
        header = probe_image(data)
        if header is None:  # the probe knows the formats we decode only
            raise ApiError(
                400,
                "invalid_image",
                f"image_bytes[{index}] is not a decodable image in a format we accept",
            )
        check_image_size(header, settings, f"image_bytes[{index}]")
        headers.append(header)
    if len({(h.width, h.height) for h in headers}) > 1:
        raise invalid("the images of one request must share one size (or send one at a time)")
    return max(headers, key=_decode_weight)


def _decode_weight(header: ImageHeader) -> int:
    """Orders headers by their decoding cost, as ``image_cost`` charges it."""
    if header.mode in ("RGBA", "LA", "PA") or header.mode.startswith("I"):
        return 2
    return 0 if header.mode in ("RGB", "L", "YCbCr", "CMYK") else 1


def _decode_all(elements: list[bytes], max_pixels: int) -> list[np.ndarray]:
    images = []
    for index, data in enumerate(elements):
        try:
            images.append(decode_one(data, max_pixels))
        except ApiError as error:
            message = f"image_bytes[{index}]: {error.message}"
            raise ApiError(error.status, error.code, message) from None
    if len({image.shape for image in images}) > 1:  # EXIF orientation may turn one
        raise invalid("the images of one request must share one size (or send one at a time)")
    return images


# ---------------------------------------------------------------------------- the path


def _check_json_outputs(
    outputs: dict[str, bool], header: ImageHeader, classes: int, count: int, limit: int
) -> None:
    for name, binary in outputs.items():
        size = json_output_bytes(name, header.height, header.width, classes, count)
        if not binary and size > limit:
            raise ApiError(
                413,
                "output_too_large",
                f"output {name!r} of {count} image(s) of {header.width}×{header.height} takes "
                f"up to {size} bytes as JSON, more than the limit of {limit}; ask for it as "
                'binary data ("parameters": {"binary_data": true})',
            )


async def accept_tensors(
    work: Work, body: bytes, header_length: str | None, served: ServedImageModel
) -> V2Request:
    """Size → admission → media type → decode for a /v2 request body (see the module doc)."""
    settings = work.settings
    state = work.state
    json_bytes = len(body) if header_length is None else int(header_length)
    work.admit(_JSON_HELD_PER_BYTE * min(json_bytes, len(body)), "the request's JSON header")
    parsed = await work.run(
        _parse_header, body, header_length, settings.max_batch_size, pool=state.probes
    )
    del body
    count = parsed.shape[0]
    elements: list[bytes] = []
    if parsed.name == "image":
        header = _uint8_header(parsed)
        check_image_size(header, settings)
    else:
        elements = await work.run(_elements, parsed, pool=state.probes)
        header = await work.run(_probe_all, elements, settings, pool=state.probes)
    classes = len(served.info.classes)
    _check_json_outputs(parsed.outputs, header, classes, count, settings.v2_json_max_bytes)
    extra = count * tensor_output_cost(
        header.height, header.width, classes=classes, outputs=parsed.outputs
    )
    image_admission(work, header, served, "png", count=count, extra=extra)
    if parsed.name == "image":
        images = await work.run(_uint8_images, parsed)
    else:
        images = await work.run(_decode_all, elements, settings.max_pixels)
    return V2Request(parsed.id, images, parsed.outputs, parsed.raw is not None)
