"""``ccnet export triton``: a Triton Inference Server model repository for an exported model.

Layout written (``REPO/NAME`` is replaced as a whole, atomically)::

    REPO/README.md               how to start Triton, what to send (and the plugin for engines)
    REPO/NAME/config.pbtxt       platform, max batch, dynamic batching, inputs/outputs
    REPO/NAME/labels.txt         the class names, one per line, line i = class id i
    REPO/NAME/1/model.onnx       (or model.plan with --engine)
    REPO/NAME/1/model.json       the sidecar of that file: classes, palette, input policy,
                                 parity (for an engine: its profile, plugin and check)

Two interfaces. ``image`` (the default for image models in ONNX) is the one ``ccnet serve``'s
``/v2`` speaks (``export.runtime.image_interface``): ``image`` UINT8 ``[N, H, W, 3]`` in,
``mask`` UINT8 ``[N, H, W]`` out (and ``logits`` FP32 ``[N, K, H, W]`` with ``logits=True``),
the padding to the stride, the crop back and the argmax inside the graph
(``export.image_graph``), so the same client code works against both servers. ``tensor`` is
the network's own: float32 ``[N, 3, H, W]`` RGB 0..255 (height and width padded to a multiple
of 8 by the client) in, float32 logits out; clip models and TensorRT engines (built from the
network's ONNX) have only this one.

Inputs, outputs, names and element types come from the ONNX graph itself; dims are the graph's
with the batch axis left out (Triton adds it when ``max_batch_size > 0``) and -1 for every
dynamic axis. An ONNX model runs in Triton's onnxruntime backend as is: ONNX Runtime inlines the
criss-cross attention local function, no plugin needed. An engine needs our TensorRT plugin
library loaded into the server: the library registers its creators as soon as the dynamic
loader opens it, so Triton's ``--backend-config=tensorrt,plugins=...`` (a plain ``dlopen``
after TensorRT is loaded) and ``LD_PRELOAD`` both work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccnet.export._progress import Progress, silent, to_stderr

__all__ = [
    "DEFAULT_MAX_BATCH",
    "INTERFACES",
    "TRITON_DTYPES",
    "TritonModel",
    "render_config",
    "write_triton_repository",
]

DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 2000
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "uint8": "TYPE_UINT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}
INTERFACES = ("image", "tensor")
_PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "plan": ("tensorrt_plan", "model.plan")}
_LABELS = "labels.txt"  # class names, line i = class id i (Triton's label_filename)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TritonModel:
    """What ``write_triton_repository`` wrote."""

    repository: Path
    model_dir: Path
    config_path: Path
    platform: str


def _dims(shape: Sequence[int | str], batched: bool) -> list[int]:
    dims = [d if isinstance(d, int) else -1 for d in shape]
    return dims[1:] if batched else dims


def _tensor_block(spec: dict[str, Any], batched: bool, labels: str | None = None) -> str:
    dtype = TRITON_DTYPES.get(spec["dtype"])
    if dtype is None:
        raise ValueError(f"tensor {spec['name']!r}: no Triton type for {spec['dtype']}")
    dims = ", ".join(str(d) for d in _dims(spec["shape"], batched))
    label = f'\n    label_filename: "{labels}"' if labels else ""
    return (
        f'  {{\n    name: "{spec["name"]}"\n    data_type: {dtype}\n    dims: [ {dims} ]'
        f"{label}\n  }}"
    )


def render_config(
    name: str,
    platform: str,
    inputs: Sequence[dict[str, Any]],
    outputs: Sequence[dict[str, Any]],
    max_batch: int,
    labels: str | None = None,
) -> str:
    """``config.pbtxt`` text for a model with the given I/O specs (sidecar ``inputs``/``outputs``).

    ``labels`` names the class-name file of the (first) output, Triton's ``label_filename``.

    With ``max_batch > 0`` the leading (batch) axis is Triton's and requests are batched
    dynamically; Triton only batches requests of equal shape, which is the case for a camera
    or a resized stream.
    """
    batched = max_batch > 0
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [",
        ",\n".join(_tensor_block(s, batched) for s in inputs),
        "]",
        "output [",
        ",\n".join(
            _tensor_block(s, batched, labels if i == 0 else None) for i, s in enumerate(outputs)
        ),
        "]",
    ]
    if batched:
        lines += [
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {DEFAULT_QUEUE_DELAY_US}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _readme(repo: Path) -> str:
    models = []
    for config in sorted(repo.glob("*/config.pbtxt")):
        text = config.read_text(encoding="utf-8")
        match = re.search(r'platform:\s*"([^"]+)"', text)
        image = re.search(r"data_type:\s*TYPE_UINT8", text.split("output [")[0]) is not None
        models.append((config.parent.name, match.group(1) if match else "?", image))
    engines = [name for name, platform, _ in models if platform == "tensorrt_plan"]
    listing = "\n".join(
        f"| `{name}` | `{platform}` | {'image' if image else 'tensor'} |"
        for name, platform, image in models
    )
    text = f"""# Triton model repository (CCNet)

Written by `ccnet export triton`.

| model | platform | interface |
|---|---|---|
{listing}

**image** interface (the requests and answers of `ccnet serve`'s `/v2`): send the decoded
image's RGB bytes as `image`, UINT8 `N x H x W x 3`, any height and width; `mask` comes back,
UINT8 `N x H x W`, the class id of every pixel (`labels.txt`, line i = class i), and `logits`,
FP32 `N x K x H x W`, if the model was exported with `--logits` (Triton returns every output
to a request that names none: name `mask`). Normalisation, the padding to a multiple of 8,
the crop back and the argmax are inside the graph. It does not scale images down: `ccnet
serve` scales an image whose long side exceeds its `max_side` (1024) for inference, this model
runs it at full size; up to that size both give the same mask, byte for byte.

**tensor** interface (clip models, engines, or `--interface tensor`): RGB values 0..255 as
float32 (`N x 3 x H x W`, clips `N x 3 x T x H x W`; normalisation is inside the graph), height
and width padded by the client to a multiple of 8 (edge replication gives `ccnet serve`'s
masks); float32 logits at the padded size come back.

Height, width (and frames) are dynamic; Triton batches requests of equal shape (dynamic
batching). `NAME/1/model.json` holds the class names, palette and the export's checks.

## ONNX models (`onnxruntime_onnx`)

No plugin is needed: the criss-cross attention node carries an ONNX local function that
ONNX Runtime inlines.

    tritonserver --model-repository={repo.resolve()}
"""
    if engines:
        text += f"""
## TensorRT engines (`tensorrt_plan`): {", ".join(f"`{e}`" for e in engines)}

The engine calls our plugin, so the server must load `libccnet_trt_plugin.so` (built with
`cmake -S export/tensorrt -B build/trt && cmake --build build/trt`, against the TensorRT major
version of the Triton image; build the engine with that TensorRT on the GPU type that will
serve, engines are not portable across them). The library registers its plugin creators as
soon as it is loaded, so Triton's TensorRT backend only has to open it:

    tritonserver --model-repository={repo.resolve()} \\
        --backend-config=tensorrt,plugins=/path/to/libccnet_trt_plugin.so

(several libraries: separate them with `;`). Preloading works too; the library then loads
`libnvinfer.so.<major>` from the library path itself, as a linked plugin library would:

    LD_PRELOAD=/path/to/libccnet_trt_plugin.so tritonserver --model-repository={repo.resolve()}

The creators are registered under the namespace `""` (the ONNX nodes' `plugin_namespace`);
set `CCNET_TRT_PLUGIN_NAMESPACE` in the server's environment only if the engine was exported
with another one.
"""
    return text


def _onnx_source(
    source: Path, staging: Path, dtype: str, opset: int | None, say: Progress
) -> tuple[Path, Path]:
    """(model.onnx, model.json) for ``source``: an exported ONNX, or a checkpoint exported now."""
    from ccnet.export.runtime.sidecar import read_sidecar, sidecar_path

    if source.suffix == ".onnx":
        if not source.is_file():
            raise FileNotFoundError(f"ONNX model not found: {source}")
        read_sidecar(source)  # validates the pair before anything is copied
        return source, sidecar_path(source)
    from ccnet.export.onnx import DEFAULT_OPSET, export_onnx

    say(f"{source} is not an .onnx file: exporting it as a checkpoint first")
    result = export_onnx(
        source, staging / "export", dtype=dtype, opset=opset or DEFAULT_OPSET, progress=say
    )
    return result.model_path, result.sidecar_path


def _engine_sidecar(engine: Path, onnx_model: Path, max_batch: int) -> dict[str, Any] | None:
    """The engine's sidecar (None if it has none), checked against the ONNX and the batch."""
    from ccnet.export.runtime.sidecar import read_engine_sidecar, sidecar_path
    from ccnet.model.files import file_sha256

    if not engine.is_file():
        raise FileNotFoundError(f"engine not found: {engine}")
    if not sidecar_path(engine).is_file():
        return None  # an engine from elsewhere (trtexec): nothing to check it against
    meta = read_engine_sidecar(engine)
    built_from = meta.get("onnx", {}).get("sha256")
    if built_from is not None and built_from != file_sha256(onnx_model):
        raise ValueError(f"{engine} was built from another ONNX file than {onnx_model}")
    for shapes in meta.get("profile", {}).values():
        low, high = shapes["min"][0], shapes["max"][0]
        if max_batch > 0 and not (low <= 1 and max_batch <= high):
            raise ValueError(
                f"{engine}: its profile covers batch {low}..{high}; Triton with max_batch_size "
                f"{max_batch} sends 1..{max_batch} (build with --min 1x... --max {max_batch}x...)"
            )
    return {**meta, "engine_file": _PLATFORMS["plan"][1]}


def _choose_interface(
    interface: str | None, meta: dict[str, Any], engine: bool, logits: bool
) -> str:
    """The interface asked for, or the default: ``image`` where it applies."""
    video = bool(meta.get("model", {}).get("video"))
    why = "a clip model" if video else "a TensorRT engine" if engine else None
    if interface is None:
        interface = "tensor" if why else "image"
    if interface == "image" and why:
        raise ValueError(
            f"the image interface (UINT8 images in, mask out) is for image models in ONNX; "
            f"{why} keeps the tensor interface (--interface tensor)"
        )
    if logits and interface != "image":
        raise ValueError(
            "a logits output is an option of the image interface; the tensor "
            "interface returns logits only"
        )
    return interface


def write_triton_repository(
    source: str | os.PathLike[str],
    repository: str | os.PathLike[str],
    name: str,
    *,
    engine: str | os.PathLike[str] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    dtype: str = "fp32",
    opset: int | None = None,
    interface: str | None = None,
    logits: bool = False,
    progress: Progress | None = to_stderr,
) -> TritonModel:
    """Write (or replace) model ``name`` in the Triton repository ``repository``.

    Args:
        source: an ONNX file written by ``ccnet export onnx`` (with its sidecar), or a
            checkpoint, which is exported (and parity-checked) first with ``dtype``/``opset``.
        repository: the model repository directory (created if needed).
        name: the model's name in Triton (a directory name).
        engine: a TensorRT engine built from that ONNX; the model is then ``tensorrt_plan``.
        max_batch: Triton's ``max_batch_size`` (0 disables batching).
        dtype: precision when ``source`` is a checkpoint.
        opset: opset when ``source`` is a checkpoint.
        interface: "image" (UINT8 images in, the mask out, as ``ccnet serve``'s /v2; the
            default for an image model in ONNX) or "tensor" (the network's float32 NCHW in,
            logits out; clip models and engines have only this one).
        logits: with the image interface, a ``logits`` output beside ``mask`` (Triton sends
            every output when a request names none, so it is left out unless asked for).
        progress: receives progress lines (stderr by default).

    Raises:
        FileNotFoundError: a missing source, sidecar or engine.
        OSError: the repository cannot be written.
        ValueError: a bad name, batch size or interface, a corrupt checkpoint or sidecar, an
            engine that does not belong to the ONNX or whose profile cannot serve
            ``max_batch``.
        export.image_graph.ImageGraphError: the image graph does not give the network's masks
            exactly (nothing is written).
    """
    from ccnet.export.image_graph import image_model
    from ccnet.export.runtime.sidecar import read_sidecar
    from ccnet.model.files import ensure_writable_dir, replace_dir, write_files_atomic

    if not _NAME.match(name):
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '-', '.'")
    if max_batch < 0:
        raise ValueError(f"max batch must be >= 0, got {max_batch}")
    if interface not in (None, *INTERFACES):
        raise ValueError(f"interface must be one of {', '.join(INTERFACES)}, got {interface!r}")
    say = progress or silent
    repo = ensure_writable_dir(repository)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        onnx_model, onnx_sidecar = _onnx_source(Path(source), staging, dtype, opset, say)
        meta = read_sidecar(onnx_sidecar)
        chosen = _choose_interface(interface, meta, engine is not None, logits)
        engine_meta = None
        if engine is not None:
            engine_meta = _engine_sidecar(Path(engine), onnx_model, max_batch)
        platform, filename = _PLATFORMS["plan" if engine is not None else "onnx"]
        model_dir = staging / name
        version = model_dir / "1"
        version.mkdir(parents=True)
        if chosen == "image":
            say("putting the image interface into the graph (pad, crop, argmax) and checking it…")
            data, meta = image_model(onnx_model.read_bytes(), meta, logits=logits)
            files = {version / filename: data}
            files[version / "model.json"] = (json.dumps(meta, indent=2) + "\n").encode("utf-8")
            write_files_atomic(files)
        else:
            shutil.copyfile(engine if engine is not None else onnx_model, version / filename)
            if engine_meta is not None:
                text = json.dumps(engine_meta, indent=2) + "\n"
                (version / "model.json").write_text(text, encoding="utf-8")
            else:
                if engine is not None:
                    say(
                        f"note: {engine} has no sidecar (engine.json): its profile was not "
                        "checked, model.json describes the ONNX it was built from"
                    )
                shutil.copyfile(onnx_sidecar, version / "model.json")
        labels = "".join(f"{label}\n" for label in meta["classes"])
        (model_dir / _LABELS).write_text(labels, encoding="utf-8")
        config = render_config(
            name, platform, meta["inputs"], meta["outputs"], max_batch, labels=_LABELS
        )
        (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
        replace_dir(model_dir, repo / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_files_atomic({repo / "README.md": _readme(repo).encode("utf-8")})
    say(
        f"wrote Triton model {repo / name} ({platform}, {chosen} interface, max_batch_size "
        f"{max_batch})"
    )
    return TritonModel(repo, repo / name, repo / name / "config.pbtxt", platform)
