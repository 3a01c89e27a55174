"""The JSON sidecar beside an exported model (``model.json`` beside ``model.onnx``).

It tells a consumer everything the graph alone does not: class names and palette, the input
policy (what to send), the precision, the opset, the dynamic axes, how the file was checked
against PyTorch and with what result, and the SHA-256 of the model file it describes (so a
stale pair is detected). Readers need only the standard library: the service imports
``read_sidecar`` without pulling in onnx or onnxruntime.

Layout (``format`` "ccnet-onnx", ``version`` 1)::

    {"format", "version", "model_file", "sha256",
     "model": {"name", "video", "num_classes", "config"},
     "classes": [str], "palette": [[r, g, b]],
     "dtype": "fp32" | "fp16", "opset": int, "ir_version": int,
     "inputs": [{"name", "dtype", "shape": [int | axis name]}], "outputs": [...],
     "dynamic_axes": {tensor: {axis index: axis name}},
     "input_policy": {...}, "custom_ops": [...], "parity": {...}, "provenance": {...}}
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

__all__ = [
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
    "TensorSpec",
    "file_sha256",
    "io_specs",
    "read_sidecar",
    "sidecar_path",
]

SIDECAR_FORMAT = "ccnet-onnx"
SIDECAR_VERSION = 1
_REQUIRED = ("model_file", "classes", "palette", "dtype", "opset", "inputs", "outputs")


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


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks (model files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    given = Path(path)
    file = given if given.suffix == ".json" else sidecar_path(given)
    if not file.is_file():
        raise FileNotFoundError(
            f"export sidecar not found: {file} (written by `ccnet export onnx`)"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{file}: not a {SIDECAR_FORMAT} sidecar")
    if data.get("version") != SIDECAR_VERSION:
        raise ValueError(
            f"{file}: sidecar version {data.get('version')!r}; this code reads {SIDECAR_VERSION}"
        )
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ValueError(f"{file}: missing fields {', '.join(missing)}")
    if verify:
        model_file = file.parent / data["model_file"]
        if not model_file.is_file():
            raise FileNotFoundError(f"{file}: the model file it describes is missing: {model_file}")
        if data.get("sha256") and file_sha256(model_file) != data["sha256"]:
            raise ValueError(
                f"{file}: {model_file} is not the file this sidecar describes (SHA-256 differs); "
                "export again"
            )
    return data
