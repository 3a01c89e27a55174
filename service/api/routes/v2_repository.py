"""The /v2 routes about models rather than inference, answered as Triton answers them.

So ``tritonclient``'s ``get_model_config``, ``get_inference_statistics`` and
``get_model_repository_index`` work against ``ccnet serve``:

* ``GET /v2/models/{name}[/versions/1]/config``: the model configuration in Triton's JSON form
  (its ``config.pbtxt`` fields): the tensors of ``export.runtime.image_interface`` (the ones
  the repository of ``ccnet export triton`` declares, plus ``image_bytes`` and ``logits``),
  the batch size, queue and instance settings this server runs with, the class names;
* ``GET /v2/models/stats``, ``/v2/models/{name}[/versions/1]/stats``: ``service.stats``;
* ``POST /v2/repository/index`` (body empty or ``{"ready": bool}``): every model the server
  knows, ``READY`` when /v2 can run it, ``UNAVAILABLE`` with the reason otherwise (a clip
  model, served on /v1 only; a models-folder file that failed to load).

This router is included before ``routes.v2``'s: ``/v2/models/stats`` would otherwise match
``/v2/models/{name}`` with a model called "stats".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request

from ccnet.export.runtime.image_interface import InterfaceTensor, image_inputs, image_outputs
from ccnet.service.api.deps import ApiKey, RegistryDep, StateDep
from ccnet.service.api.errors import ApiError
from ccnet.service.api.routes.v2 import VERSION, ModelDep
from ccnet.service.core.config import Settings
from ccnet.service.served import ServedImageModel

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["inference protocol (v2)"])


# ---------------------------------------------------------------------------- configuration


def _tensor(tensor: InterfaceTensor, *, output: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": tensor.name,
        "data_type": tensor.triton_type,
        "dims": list(tensor.dims),
        "is_shape_tensor": False,
    }
    if not output:
        entry |= {"format": "FORMAT_NONE", "allow_ragged_batch": False, "optional": True}
    return entry


def _config(served: ServedImageModel, settings: Settings) -> dict[str, Any]:
    """Triton's ModelConfig of a served image model, as the server runs it."""
    backend = served.backend
    workers = settings.parallelism()[0] if backend.thread_safe else 1
    on_gpu = str(backend.device).startswith("cuda")
    return {
        "name": served.info.name,
        "platform": f"ccnet_{backend.name}",
        "backend": backend.name,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": settings.max_batch_size,
        # each request names one: image (UINT8 pixels) or image_bytes (encoded files)
        "input": [_tensor(t, output=False) for t in image_inputs(encoded=True)],
        "output": [
            _tensor(t, output=True) for t in image_outputs(len(served.info.classes), logits=True)
        ],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(settings.max_batch_wait_ms * 1000),
            "preserve_ordering": False,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(settings.request_timeout_s * 1e6),
                "allow_timeout_override": False,
                "max_queue_size": settings.queue_size,
            },
        },
        "instance_group": [
            {
                "name": served.info.name,
                "kind": "KIND_GPU" if on_gpu else "KIND_CPU",
                "count": workers,
            }
        ],
        # Triton's ModelParameter map: string values only
        "parameters": {
            "classes": {"string_value": json.dumps(served.info.classes)},
            "max_side": {"string_value": str(settings.max_side)},
        },
    }


@router.get(
    "/models/{model_name}/config", summary="Model configuration (v2)", dependencies=[ApiKey]
)
def model_config(served: ModelDep, state: StateDep) -> dict[str, Any]:
    """The model's configuration in Triton's JSON form (``config.pbtxt``'s fields)."""
    return _config(served, state.settings)


@router.get(
    "/models/{model_name}/versions/{version}/config",
    summary="Model configuration (v2), by version",
    dependencies=[ApiKey],
)
def model_version_config(served: ModelDep, state: StateDep) -> dict[str, Any]:
    return _config(served, state.settings)


# ---------------------------------------------------------------------------- statistics


@router.get(
    "/models/stats", summary="Inference statistics of every model (v2)", dependencies=[ApiKey]
)
def all_statistics(registry: RegistryDep) -> dict[str, Any]:
    """Triton's statistics of every image model (clip models are not served on /v2)."""
    served = sorted(
        (s for s in registry if isinstance(s, ServedImageModel)), key=lambda s: s.info.name
    )
    return {"model_stats": [s.statistics.model_stats(s.info.name, VERSION) for s in served]}


@router.get(
    "/models/{model_name}/stats", summary="Inference statistics (v2)", dependencies=[ApiKey]
)
def model_statistics(served: ModelDep) -> dict[str, Any]:
    """Images answered and failed, queue and compute times, per batch size (``service.stats``)."""
    return {"model_stats": [served.statistics.model_stats(served.info.name, VERSION)]}


@router.get(
    "/models/{model_name}/versions/{version}/stats",
    summary="Inference statistics (v2), by version",
    dependencies=[ApiKey],
)
def model_version_statistics(served: ModelDep) -> dict[str, Any]:
    return {"model_stats": [served.statistics.model_stats(served.info.name, VERSION)]}


# ---------------------------------------------------------------------------- repository


_INDEX_BODY_BYTES = 1024  # {"ready": true} and room to spare; nothing larger is buffered


async def _small_body(request: Request) -> bytes:
    """The body, refused (413) once it outgrows ``_INDEX_BODY_BYTES``, never read whole."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _INDEX_BODY_BYTES:
            raise ApiError(
                413,
                "payload_too_large",
                f"the index request's body is at most {_INDEX_BODY_BYTES} bytes",
            )
    return bytes(body)


def _ready_only(body: bytes) -> bool:
    """The request's ``ready`` flag (an empty body, as tritonclient sends, means false)."""
    if not body.strip():
        return False
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "invalid_request", f"the body is not JSON: {error}") from None
    ready = parsed.get("ready", False) if isinstance(parsed, dict) else None
    if not isinstance(ready, bool):
        raise ApiError(400, "invalid_request", 'the body is {"ready": true|false} or empty')
    return ready


@router.post("/repository/index", summary="Model repository index (v2)", dependencies=[ApiKey])
async def repository_index(request: Request, state: StateDep) -> list[dict[str, str]]:
    """Every model the server knows, by name: ``READY`` for the image models /v2 runs,
    ``UNAVAILABLE`` with a reason for clip models and for models-folder files that failed to
    load (and are not serving an earlier version). ``{"ready": true}`` keeps the ready ones."""
    ready_only = _ready_only(await _small_body(request))
    registry = state.registry
    entries: dict[str, dict[str, str]] = {}
    loaded_files = set()
    for served in registry:
        if served.version is not None:
            loaded_files.add(served.version.path.name)
        if isinstance(served, ServedImageModel):
            entries[served.info.name] = {
                "name": served.info.name,
                "version": VERSION,
                "state": "READY",
            }
        else:
            entries[served.info.name] = {
                "name": served.info.name,
                "version": VERSION,
                "state": "UNAVAILABLE",
                "reason": "segments clips: served on /v1/segment/video, not on /v2",
            }
    for file, failure in list(registry.failures.items()):
        name = Path(file).stem
        if file in loaded_files or name in entries:
            continue
        entries[name] = {"name": name, "version": "", "state": "UNAVAILABLE",
                         "reason": f"{file} failed to load: {failure.message}"}  # fmt: skip
    listed = [entries[name] for name in sorted(entries)]
    return [e for e in listed if e["state"] == "READY"] if ready_only else listed
