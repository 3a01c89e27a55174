"""The Open Inference Protocol (KServe v2, as Triton speaks it) beside /v1.

So a Triton or KServe client (``tritonclient.http``) works unchanged:

* ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``: server metadata and probes (no key);
* ``GET /v2/models/{name}[/versions/1]``: the model's tensors (names, datatypes, shapes);
* ``GET /v2/models/{name}[/versions/1]/ready``;
* ``POST /v2/models/{name}[/versions/1]/infer``: JSON tensors, or the binary tensor data
  extension (``Inference-Header-Content-Length``: a JSON header, then the raw tensors).

Inputs (exactly one): ``image`` UINT8 ``[N, H, W, 3]`` RGB, or ``image_bytes`` BYTES ``[N]``
encoded images (PNG, JPEG, …; in JSON, base64 strings), all of one size. Outputs: ``mask``
UINT8 ``[N, H, W]`` class ids at the input's size (the default), and on request ``logits``
FP32 ``[N, K, H, W]``. Each image runs through the pipeline of /v1/segment (``Segmenter``'s
prepare and finish) on the model's micro-batcher, under the same API key, byte, pixel and
memory limits, deadline, status codes and error codes as /v1; error bodies take the
protocol's shape (``error`` a string) so Triton's client can read them. Only image models are
served here. The tensors are ``export.runtime.image_interface``'s, which the Triton repository
of ``ccnet export triton`` speaks too; ``routes.v2_repository`` answers the model
configuration, statistics and repository index.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Path, Request, Response

from ccnet.export.runtime.image_interface import image_inputs, image_outputs
from ccnet.inference.codecs import ImageDecodeError, ImageTooLargeError, decode_image
from ccnet.inference.pipeline import logits_to_size
from ccnet.service.admission import OverBudgetError, Reservation
from ccnet.service.api.acceptance import Work, overloaded
from ccnet.service.api.deps import ApiKey, RegistryDep, StateDep, leased, readiness_error
from ccnet.service.api.errors import ApiError
from ccnet.service.api.upload import UploadLimits, read_upload
from ccnet.service.core.deadline import Deadline
from ccnet.service.costs import ImageHeader, image_cost
from ccnet.service.registry import ModelRegistry
from ccnet.service.served import ServedImageModel

__all__ = ["router"]


# errors take the protocol's shape for every /v2 path (``errors.error_response_for``)
router = APIRouter(prefix="/v2", tags=["inference protocol (v2)"])

VERSION = "1"  # a served model has one version
_HEADER_LENGTH = "Inference-Header-Content-Length"
_INPUTS = ("image", "image_bytes")
_OUTPUTS = ("mask", "logits")
ModelPath = Annotated[str, Path(min_length=1, max_length=128, description="a served model")]


# ---------------------------------------------------------------------------- health, metadata


@router.get("", summary="Server metadata (v2)")
def server_metadata(request: Request) -> dict[str, Any]:
    return {
        "name": "ccnet",
        "version": request.app.version,
        "extensions": ["binary_tensor_data"],
    }


@router.get("/health/live", summary="Liveness (v2)")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness (v2): 200 once every model is loaded")
def ready(state: StateDep) -> dict[str, bool]:
    problem = state.readiness.problem()
    if problem is not None:
        raise readiness_error(problem)
    return {"ready": True}


def _served(registry: ModelRegistry, name: str, version: str | None) -> ServedImageModel:
    """The image model ``name`` (version "1" or none); 404 unknown, 400 a clip model."""
    if version not in (None, "", VERSION):
        raise ApiError(404, "unknown_model", f"model {name!r} has version {VERSION} only")
    served = registry.models.get(name)
    if served is None:
        known = ", ".join(sorted(registry.models)) or "none"
        raise ApiError(404, "unknown_model", f"no model named {name!r} (loaded: {known})")
    if not isinstance(served, ServedImageModel):
        raise ApiError(
            400,
            "unsupported_model",
            f"model {name!r} segments clips; the v2 protocol serves image models (use /v1)",
        )
    return served


def _model(
    registry: RegistryDep, model_name: ModelPath, version: str | None = None
) -> Iterator[ServedImageModel]:
    yield from leased(registry, lambda: _served(registry, model_name, version))


ModelDep = Annotated[ServedImageModel, Depends(_model)]


def _metadata(served: ServedImageModel) -> dict[str, Any]:
    classes = len(served.info.classes)
    return {
        "name": served.info.name,
        "versions": [VERSION],
        "platform": f"ccnet_{served.backend.name}",
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape()}
            for t in image_inputs(encoded=True)
        ],
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape()}
            for t in image_outputs(classes, logits=True)
        ],
        "parameters": {"classes": served.info.classes},
    }


@router.get("/models/{model_name}", summary="Model metadata (v2)", dependencies=[ApiKey])
def model_metadata(served: ModelDep) -> dict[str, Any]:
    """Tensor names, datatypes and shapes (-1: any size), and the class names."""
    return _metadata(served)


@router.get(
    "/models/{model_name}/versions/{version}",
    summary="Model metadata (v2), by version",
    dependencies=[ApiKey],
)
def model_version_metadata(served: ModelDep) -> dict[str, Any]:
    return _metadata(served)


@router.get("/models/{model_name}/ready", summary="Model readiness (v2)", dependencies=[ApiKey])
def model_ready(served: ModelDep) -> dict[str, Any]:
    return {"name": served.info.name, "ready": True}


@router.get(
    "/models/{model_name}/versions/{version}/ready",
    summary="Model readiness (v2), by version",
    dependencies=[ApiKey],
)
def model_version_ready(served: ModelDep) -> dict[str, Any]:
    return {"name": served.info.name, "ready": True}


# ---------------------------------------------------------------------------- request parsing


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_inference_request", message)


@dataclass(frozen=True)
class _Request:
    """A parsed inference request: the images and what to send back."""

    id: str | None
    images: list[np.ndarray]  # (H, W, 3) uint8 each, one size
    outputs: dict[str, bool]  # output name -> binary
    input_binary: bool


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        blobs, head = b"", body
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise _invalid(f"{_HEADER_LENGTH} {header_length!r} does not fit the body")
        split = int(header_length)
        head, blobs = body[:split], body[split:]
    try:
        parsed = orjson.loads(head)
    except orjson.JSONDecodeError as error:
        raise _invalid(f"the request header is not JSON: {error}") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("inputs"), list):
        raise _invalid("the request needs an 'inputs' list")
    return parsed, blobs


def _shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _invalid(f"input {tensor.get('name')!r}: 'shape' must be a list of sizes")
    return shape


def _uint8_images(tensor: dict[str, Any], raw: bytes | None) -> list[np.ndarray]:
    shape = _shape(tensor)
    if tensor.get("datatype") != "UINT8" or len(shape) != 4 or shape[3] != 3:
        raise _invalid("input 'image' must be UINT8 with shape [N, H, W, 3] (RGB 0..255)")
    count = int(np.prod(shape))
    if raw is not None:
        if len(raw) != count:
            raise _invalid(f"input 'image': {len(raw)} bytes for shape {shape} ({count} values)")
        array = np.frombuffer(raw, dtype=np.uint8)
    else:
        data = tensor.get("data")
        try:
            values = np.asarray(data, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise _invalid("input 'image': 'data' must be integers 0..255") from None
        if values.size != count:
            raise _invalid(f"input 'image': {values.size} values for shape {shape}")
        if values.size and (values.min() < 0 or values.max() > 255):
            raise _invalid("input 'image': UINT8 values lie in 0..255")
        array = values.astype(np.uint8)
    images = array.reshape(shape)
    return [np.ascontiguousarray(image) for image in images]


def _bytes_elements(tensor: dict[str, Any], raw: bytes | None) -> list[bytes]:
    shape = _shape(tensor)
    if tensor.get("datatype") != "BYTES" or len(shape) not in (1, 2) or shape[1:] not in ([], [1]):
        raise _invalid("input 'image_bytes' must be BYTES with shape [N] or [N, 1]")
    count = shape[0]
    if raw is None:
        data = tensor.get("data")
        if not isinstance(data, list) or len(data) != count:
            raise _invalid(f"input 'image_bytes': 'data' must list {count} base64 strings")
        try:
            return [base64.b64decode(item, validate=True) for item in data]
        except (TypeError, ValueError, binascii.Error):
            raise _invalid("input 'image_bytes': JSON elements must be base64 strings") from None
    elements, offset = [], 0
    for _ in range(count):  # the binary form: each element is a 4-byte length, then its bytes
        if offset + 4 > len(raw):
            raise _invalid("input 'image_bytes': the binary data ends early")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise _invalid("input 'image_bytes': the binary data ends early")
        elements.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise _invalid("input 'image_bytes': binary data left over after the elements")
    return elements


def _decode_encoded(elements: list[bytes], max_pixels: int) -> list[np.ndarray]:
    images = []
    for index, data in enumerate(elements):
        try:
            images.append(decode_image(data, max_pixels))
        except ImageTooLargeError as error:
            raise ApiError(413, "image_too_large", f"image_bytes[{index}]: {error}") from None
        except ImageDecodeError as error:
            raise ApiError(400, "invalid_image", f"image_bytes[{index}]: {error}") from None
    return images


def _requested_outputs(parsed: dict[str, Any]) -> dict[str, bool]:
    parameters = parsed.get("parameters") or {}
    binary_default = bool(parameters.get("binary_data_output", False))
    requested = parsed.get("outputs")
    if not requested:
        return {"mask": binary_default}
    if not isinstance(requested, list):
        raise _invalid("'outputs' must be a list")
    outputs: dict[str, bool] = {}
    for entry in requested:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in _OUTPUTS:
            raise _invalid(f"unknown output {name!r}; this model has {', '.join(_OUTPUTS)}")
        binary = (entry.get("parameters") or {}).get("binary_data", binary_default)
        outputs[name] = bool(binary)
    return outputs


def _parse(body: bytes, header_length: str | None, max_pixels: int, max_batch: int) -> _Request:
    """The images of an inference request (decoded, checked) and the outputs wanted."""
    parsed, blobs = _split_body(body, header_length)
    inputs = parsed["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict) or inputs[0].get("name") not in _INPUTS:
        raise _invalid("send exactly one input: 'image' (UINT8 [N,H,W,3]) or 'image_bytes'")
    tensor = inputs[0]
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    raw = None
    if size is not None:
        if not isinstance(size, int) or size != len(blobs):
            raise _invalid(f"binary_data_size {size!r} does not match the {len(blobs)} bytes sent")
        raw = blobs
    elif blobs:
        raise _invalid("binary data after the header, but no input declares binary_data_size")
    shape = _shape(tensor)
    if not shape or shape[0] < 1:
        raise _invalid("the batch holds no image")
    if shape[0] > max_batch:
        raise ApiError(
            413, "batch_too_large", f"{shape[0]} images, more than the limit of {max_batch}"
        )
    if tensor["name"] == "image":
        if len(shape) == 4 and shape[1] * shape[2] > max_pixels:
            raise ApiError(
                413,
                "image_too_large",
                f"image is {shape[2]}×{shape[1]} = {shape[1] * shape[2]} pixels, more pixels "
                f"than the limit of {max_pixels}",
            )
        images = _uint8_images(tensor, raw)
    else:
        images = _decode_encoded(_bytes_elements(tensor, raw), max_pixels)
    if len({image.shape for image in images}) > 1:
        raise _invalid("the images of one request must share one size (or send one at a time)")
    if min(images[0].shape[:2]) < 1:
        raise _invalid("an image has no pixels")
    request_id = parsed.get("id")
    return _Request(
        str(request_id) if request_id is not None else None,
        images,
        _requested_outputs(parsed),
        raw is not None,
    )


# ---------------------------------------------------------------------------- inference


def _response(
    request: _Request, served: ServedImageModel, tensors: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str], str]:
    """The v2 response body, its extra headers and media type."""
    outputs, blobs = [], []
    for name, binary in request.outputs.items():
        array = tensors[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": "UINT8" if array.dtype == np.uint8 else "FP32",
            "shape": list(array.shape),
        }
        if binary:
            blob = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    header = {"model_name": served.info.name, "model_version": VERSION, "outputs": outputs}
    if request.id is not None:
        header["id"] = request.id
    head = orjson.dumps(header)
    if not blobs:
        return head, {}, "application/json"
    return b"".join([head, *blobs]), {_HEADER_LENGTH: str(len(head))}, "application/octet-stream"


def _body_limit(settings: Any) -> int:
    """Bytes a request body may have: a full batch of images at the per-image pixel limit
    as raw UINT8 (the binary form), or the /v1 upload limit per image, whichever is larger;
    JSON numbers take up to 4 bytes per value, so JSON bodies are held to the same bytes."""
    raw = settings.max_batch_size * settings.max_pixels * 3
    return max(raw, settings.max_batch_size * settings.max_image_bytes)


@router.post(
    "/models/{model_name}/infer", summary="Inference (v2): images in, masks out",
    dependencies=[ApiKey],
)  # fmt: skip
async def infer(request: Request, served: ModelDep, state: StateDep) -> Response:
    return await _infer(request, served, state)


@router.post(
    "/models/{model_name}/versions/{version}/infer",
    summary="Inference (v2), by version",
    dependencies=[ApiKey],
)
async def infer_version(request: Request, served: ModelDep, state: StateDep) -> Response:
    return await _infer(request, served, state)


async def _infer(request: Request, served: ServedImageModel, state: Any) -> Response:
    settings = state.settings
    reservation = Reservation(state.budget)
    try:
        limits = UploadLimits(
            _body_limit(settings), settings.max_form_parts, settings.max_form_field_bytes
        )
        try:
            upload = await read_upload(request, "inputs", limits, reservation)
        except OverBudgetError as error:
            raise overloaded(settings, str(error)) from None
        work = Work(state, Deadline.after(settings.request_timeout_s), reservation)
        parsed = await work.run(
            _parse,
            upload.data,
            request.headers.get(_HEADER_LENGTH),
            settings.max_pixels,
            settings.max_batch_size,
        )
        del upload
        height, width = parsed.images[0].shape[:2]
        header = ImageHeader(width=width, height=height, mode="RGB", format=None)
        classes = len(served.info.classes)
        output = "json" if "logits" in parsed.outputs else "png"
        cost = image_cost(header, max_side=settings.max_side, classes=classes, output=output)
        work.admit(cost * len(parsed.images), f"{len(parsed.images)} image(s) of {width}×{height}")
        if not served.batcher.has_room():
            raise overloaded(settings, "the image queue is full")
        tensors, seconds = await _segment(work, served, parsed)
        body, headers, media_type = await work.run(
            _response, parsed, served, tensors, pool=state.encoders
        )
    finally:
        reservation.release()
    headers.update({"X-Model": served.info.name, "X-Inference-Ms": f"{seconds * 1e3:.2f}"})
    return Response(body, media_type=media_type, headers=headers)


async def _segment(
    work: Work, served: ServedImageModel, parsed: _Request
) -> tuple[dict[str, np.ndarray], float]:
    """Every image through the micro-batcher (they share batches with /v1 requests); the
    stacked outputs and the longest batch's forward time."""
    segmenter = served.segmenter
    prepared = [await work.run(segmenter.prepare, image) for image in parsed.images]
    results = await asyncio.gather(
        *(
            work.queue(lambda deadline, p=p: served.batcher.submit(p.pixels, deadline))
            for _, p in prepared
        )
    )

    def finish() -> dict[str, np.ndarray]:
        tensors: dict[str, np.ndarray] = {}
        if "mask" in parsed.outputs:
            tensors["mask"] = np.stack(
                [
                    segmenter.finish(rgb, p, result.output, result.seconds * 1e3).mask
                    for (rgb, p), result in zip(prepared, results, strict=True)
                ]
            )
        if "logits" in parsed.outputs:
            tensors["logits"] = np.stack(
                [
                    logits_to_size(result.output, p.scaled, p.size)
                    for (_, p), result in zip(prepared, results, strict=True)
                ]
            )
        return tensors

    tensors = await work.run(finish)
    return tensors, max(result.seconds for result in results)
