"""The JSON sidecars beside exported models: ``model.json`` beside ``model.onnx`` and
``engine.json`` beside a TensorRT engine. One reader for each, both validating, so the engine
builder, the Triton writer and the service never parse a sidecar on their own.

It tells a consumer everything the graph alone does not: class names and palette, the input
policy (what to send), the precision, the opset, the dynamic axes, how the file was checked
against PyTorch and with what result, and the SHA-256 of the model file it describes (so a
stale pair is detected). The sidecar describes the file beside it with its own stem
(``mine.json`` describes ``mine.onnx``, whatever ``model_file`` recorded when it was written, so
a renamed pair still matches); a recorded file name never leads out of the sidecar's folder
(a path in it is refused: it would make the reader a file-existence and SHA-256 oracle for the
whole disk). Readers need only the standard library: the service imports
``read_sidecar`` without pulling in onnx or onnxruntime.

Layout (``format`` "ccnet-onnx", ``version`` 1)::

    {"format", "version", "model_file", "sha256",
     "model": {"name", "video", "num_classes", "config"},
     "classes": [str], "palette": [[r, g, b]],
     "dtype": "fp32" | "fp16", "opset": int, "ir_version": int,
     "inputs": [{"name", "dtype", "shape": [int | axis name]}], "outputs": [...],
     "dynamic_axes": {tensor: {axis index: axis name}},
     "input_policy": {...}, "custom_ops": [...], "parity": {...}, "provenance": {...}}

Engine sidecar (``format`` "ccnet-trt-engine", ``version`` 1), written by ``ccnet export
tensorrt``::

    {"format", "version", "engine_file", "onnx": {"file", "sha256"}, "tensorrt", "device",
     "plugin", "plugin_sha256", "plugin_layers", "custom_ops", "dtype", "profile", "inputs",
     "outputs", "classes", "palette", "input_policy", "check", "built"}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccnet.model.files import file_sha256

if TYPE_CHECKING:
    import onnx

__all__ = [
    "ENGINE_FORMAT",
    "ENGINE_VERSION",
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
    "TensorSpec",
    "io_specs",
    "read_engine_sidecar",
    "read_sidecar",
    "sidecar_path",
]

SIDECAR_FORMAT = "ccnet-onnx"
SIDECAR_VERSION = 1
_REQUIRED = ("model_file", "classes", "palette", "dtype", "opset", "inputs", "outputs")
ENGINE_FORMAT = "ccnet-trt-engine"
ENGINE_VERSION = 1
_ENGINE_REQUIRED = ("engine_file", "tensorrt", "dtype", "inputs", "outputs", "classes", "palette")


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, element type (numpy name) and shape.

    ``shape`` holds ints for fixed axes and the axis name (``"batch"``, ``"height"``…) for
    dynamic ones.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


def io_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs (initializers excluded) and outputs as ``TensorSpec`` lists."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        shape = tuple(
            d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in tensor.shape.dim
        )
        return TensorSpec(value.name, dtype, shape)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.json`` (same directory, same stem)."""
    return Path(model_path).with_suffix(".json")


def read_sidecar(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """Load and validate the sidecar of an exported model.

    Args:
        path: the sidecar itself (``.json``) or the model file it describes.
        verify: also check that the model file exists and its SHA-256 matches.

    Raises:
        FileNotFoundError: the sidecar (or, with ``verify``, the model file) is missing.
        ValueError: not a sidecar of this project, an unsupported version, a missing field,
            or a model file that is not the one the sidecar describes.
    """
    file, data = _load_sidecar(
        path, "export sidecar", "ccnet export onnx", SIDECAR_FORMAT, SIDECAR_VERSION, _REQUIRED
    )
    _check_file_name(file, data, "model_file")
    if verify:
        given = Path(path)
        model_file = given if given.suffix != ".json" else file.with_suffix(".onnx")
        _check_described(file, model_file, data, "model file", "export again")
    return data


def _check_described(
    file: Path, described: Path, data: dict[str, Any], what: str, fix: str
) -> None:
    """The file a sidecar describes exists and has the recorded SHA-256 (when it records one).

    Raises:
        FileNotFoundError: it is missing.
        ValueError: it is another file than the sidecar describes; ``fix`` says what to do.
    """
    if not described.is_file():
        raise FileNotFoundError(f"{file}: the {what} it describes is missing: {described}")
    if data.get("sha256") and file_sha256(described) != data["sha256"]:
        raise ValueError(
            f"{file}: {described} is not the {what} this sidecar describes (SHA-256 differs); {fix}"
        )


def _check_file_name(file: Path, data: dict[str, Any], field: str) -> None:
    """A recorded file name is a plain name in the sidecar's folder, never a path."""
    name = data[field]
    if (
        not isinstance(name, str)
        or not name
        or name != Path(name).name
        or "\\" in name
        or name in (".", "..")
    ):
        raise ValueError(
            f"{file}: {field} must name a file in the sidecar's own folder, got {str(name)[:80]!r}"
        )


def _load_sidecar(
    path: str | os.PathLike[str],
    kind: str,
    written_by: str,
    format_name: str,
    version: int,
    required: Iterable[str],
) -> tuple[Path, dict[str, Any]]:
    """The sidecar of ``path`` (itself when it is the ``.json``) and its fields, checked for
    format, version and the ``required`` keys; what the two readers share."""
    given = Path(path)
    file = given if given.suffix == ".json" else sidecar_path(given)
    data = _load_json(file, kind, written_by)
    if data.get("format") != format_name:
        raise ValueError(f"{file}: not a {format_name} sidecar")
    if data.get("version") != version:
        raise ValueError(
            f"{file}: {kind} version {data.get('version')!r}; this code reads {version}"
        )
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(f"{file}: missing fields {', '.join(missing)}")
    return file, data


def _load_json(file: Path, kind: str, written_by: str) -> dict[str, Any]:
    if not file.is_file():
        raise FileNotFoundError(f"{kind} not found: {file} (written by `{written_by}`)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: not a {kind} (a JSON object is expected)")
    return data


def read_engine_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate the sidecar of a TensorRT engine (``engine.json`` beside the plan).

    Args:
        path: the sidecar itself (``.json``) or the engine file it describes.

    Raises:
        FileNotFoundError: the sidecar or the engine file is missing.
        ValueError: not an engine sidecar of this project, an unsupported version, a missing
            or malformed field, or an engine file that is not the one it describes.
    """
    file, data = _load_sidecar(
        path, "engine sidecar", "ccnet export tensorrt", ENGINE_FORMAT, ENGINE_VERSION,
        _ENGINE_REQUIRED,
    )  # fmt: skip
    inputs = data["inputs"]
    if not (isinstance(inputs, list) and inputs and isinstance(inputs[0], dict)):
        raise ValueError(f"{file}: 'inputs' must list the engine's input tensors")
    if len(inputs[0].get("shape", ())) not in (4, 5):
        raise ValueError(f"{file}: the input must have 4 (images) or 5 (clips) dims")
    if not (isinstance(data["classes"], list) and data["classes"]):
        raise ValueError(f"{file}: 'classes' must be a non-empty list of names")
    if len(data["palette"]) != len(data["classes"]):
        colours, classes = len(data["palette"]), len(data["classes"])
        raise ValueError(f"{file}: {colours} palette colours for {classes} classes")
    _check_file_name(file, data, "engine_file")
    given = Path(path)
    engine = given if given.suffix != ".json" else file.parent / data["engine_file"]
    _check_described(file, engine, data, "engine file", "build it again")
    return data
