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
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Path, Request, Response

from ccnet.export.runtime.image_interface import image_inputs, image_outputs
from ccnet.inference.pipeline import logits_to_size
from ccnet.service.api.acceptance import Work, client_share, receive
from ccnet.service.api.deps import ApiKey, RegistryDep, StateDep, leased, readiness_error
from ccnet.service.api.errors import ApiError
from ccnet.service.api.v2_infer import HEADER_LENGTH, V2Request, accept_tensors, body_limit
from ccnet.service.registry import ModelRegistry
from ccnet.service.served import ServedImageModel

__all__ = ["router"]


# errors take the protocol's shape for every /v2 path (``errors.error_response_for``)
router = APIRouter(prefix="/v2", tags=["inference protocol (v2)"])

VERSION = "1"  # a served model has one version
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


# ---------------------------------------------------------------------------- inference


def _response(
    request: V2Request, served: ServedImageModel, tensors: dict[str, np.ndarray]
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
    return b"".join([head, *blobs]), {HEADER_LENGTH: str(len(head))}, "application/octet-stream"


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
    """/v1's acceptance path (``api.v2_infer``), then the micro-batcher and the answer."""
    header_length = request.headers.get(HEADER_LENGTH)
    max_bytes = body_limit(state.settings, header_length)
    async with (
        client_share(request, state.image_shares) as client,
        receive(request, "inputs", max_bytes, client) as (work, upload),
    ):
        parsed = await accept_tensors(work, upload.data, header_length, served)
        del upload
        tensors, seconds = await _segment(work, served, parsed)
        body, headers, media_type = await work.run(
            _response, parsed, served, tensors, pool=state.encoders
        )
    headers.update({"X-Model": served.info.name, "X-Inference-Ms": f"{seconds * 1e3:.2f}"})
    return Response(body, media_type=media_type, headers=headers)


async def _segment(
    work: Work, served: ServedImageModel, parsed: V2Request
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
