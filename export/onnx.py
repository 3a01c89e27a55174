"""``ccnet export onnx``: a checkpoint to a verified ``model.onnx`` and its ``model.json`` sidecar.

Steps: load the checkpoint; make sure the output directory is writable (before minutes of
work); capture the graph (``export.graph_capture``: dynamo exporter, one ``ccnet`` node per
criss-cross attention); attach the local functions (``export.onnx_functions``); run the ONNX
checker and refuse ``EyeLike`` anywhere; run ONNX Runtime against PyTorch on noise and on real
photographs at two sizes (``export.parity``); only then write both files, each to a temporary
and renamed into place. If parity fails nothing is written and the error says by how much.

Input policy: normalisation is baked into the graph. The file takes RGB values in 0..255 as
float32 ``(N, 3, H, W)`` (``(N, 3, T, H, W)`` for clips) and returns float32 logits at the input
size, whatever ``--dtype`` says. Why: every backend (ONNX Runtime, TensorRT, Triton) then agrees
by construction; a client cannot get the statistics, the channel order (the official CCNet
checkpoints want BGR) or the value scale wrong; and the fp16 model normalises in float32 before
its first cast. The sidecar still records the statistics, as documentation. Casting a 3-channel
input costs nothing next to the network.

Output: float32 logits ``(N, K, H, W)`` by default; ``--output mask`` appends an ArgMax over the
classes (and a Cast to uint8 for up to 256 classes, else int64), so the file returns the class-id
mask ``(N, H, W)`` (``(N, T, H, W)`` for clips): about 4K times fewer bytes to send back. The
parity check runs on the logits graph first; the mask graph must then give exactly its argmax.

Precision: ``--dtype fp16`` casts the network to float16 (TensorRT 10+ networks are strongly
typed, so an fp16 engine needs fp16 in the ONNX); the attention's softmax is computed in float32
inside the op, as in PyTorch.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccnet.export._progress import Progress, silent, to_stderr

if TYPE_CHECKING:
    import onnx

    from ccnet.model import CCNet

__all__ = [
    "DEFAULT_OPSET",
    "MAX_OPSET",
    "MIN_OPSET",
    "MODEL_FILE",
    "OUTPUTS",
    "OnnxExport",
    "export_onnx",
    "export_onnx_model",
]

MODEL_FILE = "model.onnx"
DEFAULT_OPSET = 18  # torchlib's own opset: no version conversion; read by every TensorRT 10 parser
MIN_OPSET = 18  # ReduceMax with axes as an input, used by the attention function
MAX_OPSET = 23  # the newest opset torch 2.13's exporter emits
OUTPUTS = ("logits", "mask")  # what the file returns (``--output``)
MASK_NAME = "mask"


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote."""

    model_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]


def _require_export_tools() -> None:
    missing = []
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ValueError(f"ONNX export needs {', '.join(missing)}: pip install -e '.[export]'")


def _validate(
    dtype: str,
    opset: int,
    check_sizes: Sequence[tuple[int, int]],
    fp16_min_agreement: float | None,
    output: str = "logits",
) -> None:
    from ccnet.export.graph_capture import DTYPES

    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if fp16_min_agreement is not None and (dtype != "fp16" or not 0 < fp16_min_agreement <= 1):
        raise ValueError(
            f"fp16_min_agreement applies to fp16 exports and lies in (0, 1], got "
            f"{fp16_min_agreement} for {dtype}"
        )
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    if len(set(check_sizes)) < 2:
        raise ValueError(f"the parity check needs two different sizes, got {list(check_sizes)}")
    if any(h < 8 or w < 8 for h, w in check_sizes):
        raise ValueError(f"check sizes must be at least 8×8, got {list(check_sizes)}")


def _check_graph(model: onnx.ModelProto) -> None:
    """ONNX checker (with strict shape inference) and no ``EyeLike`` in graph or functions."""
    import onnx

    onnx.checker.check_model(model, full_check=True)
    bodies = [model.graph.node, *(f.node for f in model.functions)]
    if any(node.op_type == "EyeLike" for nodes in bodies for node in nodes):
        raise ValueError("the exported graph contains EyeLike, which TensorRT rejects")


def _group_attention(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """The attention nodes by op type, in a stable order."""
    from ccnet.export.onnx_functions import attention_nodes

    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in attention_nodes(model):
        groups.setdefault(node.op_type, []).append(node)
    return dict(sorted(groups.items()))


def _input_policy(meta: Mapping[str, Any], video: bool) -> dict[str, Any]:
    return {
        "normalization": "in_graph",
        "layout": "NCTHW" if video else "NCHW",
        "channel_order": "RGB",
        "value_range": [0, 255],
        "dtype": "float32",
        "applied_in_graph": meta["normalization"],
        "note": "send RGB values 0..255 (uint8 image data converted to float32); scaling, "
        "channel order and mean/std are applied inside the graph",
    }


def _build_sidecar(
    model: onnx.ModelProto,
    data: bytes,
    meta: Mapping[str, Any],
    *,
    dtype: str,
    report: dict[str, Any],
    source: str,
    output: str = "logits",
) -> dict[str, Any]:
    import hashlib

    import onnx
    import onnxruntime
    import onnxscript
    import torch

    from ccnet.export.onnx_functions import OP_DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION
    from ccnet.export.runtime.sidecar import SIDECAR_FORMAT, SIDECAR_VERSION, io_specs

    config = meta["config"]
    video = bool(config.get("video"))
    inputs, outputs = io_specs(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "model_file": MODEL_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "model": {
            "name": config.get("name"),
            "video": video,
            "num_classes": config.get("num_classes"),
            "clip_length": config.get("clip_length", 1),
            "config": dict(config),
        },
        "classes": list(meta["classes"]),
        "palette": [list(c) for c in meta["palette"]],
        "dtype": dtype,
        "output": output,
        "opset": opset,
        "ir_version": model.ir_version,
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "dynamic_axes": {
            s.name: {str(i): n for i, n in s.dynamic_axes.items()} for s in [*inputs, *outputs]
        },
        "input_policy": _input_policy(meta, video),
        "custom_ops": [
            {
                "domain": OP_DOMAIN,
                "op_type": op,
                "nodes": len(nodes),
                "inputs": ["q", "k", "v"],
                "plugin_version": PLUGIN_VERSION,
                "plugin_namespace": PLUGIN_NAMESPACE,
                "local_function": True,
            }
            for op, nodes in _group_attention(model).items()
        ],
        "parity": report,
        "provenance": {
            "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source": source,
            "exporter": "torch.onnx.export(dynamo=True)",
            "torch": str(torch.__version__),
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__,
            "checkpoint": meta.get("provenance", {}),
        },
    }


def _append_argmax(model: onnx.ModelProto, num_classes: int) -> onnx.ModelProto:
    """The graph with ArgMax over the class axis (and a Cast to uint8 when the ids fit) after
    its logits output: ``(N, K, [T,] H, W)`` float logits -> ``(N, [T,] H, W)`` class ids."""
    import onnx
    from onnx import TensorProto, helper

    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    graph = masked.graph
    (logits,) = graph.output
    ids = f"{MASK_NAME}_int64"
    narrow = num_classes <= 256
    graph.node.append(
        helper.make_node(
            "ArgMax",
            [logits.name],
            [ids if narrow else MASK_NAME],
            axis=1,
            keepdims=0,
            select_last_index=0,
            name="mask_argmax",
        )
    )
    if narrow:
        graph.node.append(
            helper.make_node("Cast", [ids], [MASK_NAME], to=TensorProto.UINT8, name="mask_cast")
        )
    dims = list(logits.type.tensor_type.shape.dim)
    shape = [d.dim_param or d.dim_value for d in dims[:1] + dims[2:]]
    elem = TensorProto.UINT8 if narrow else TensorProto.INT64
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(MASK_NAME, elem, shape))
    return masked


def _check_mask_graph(
    masked: bytes, logits: bytes, sizes: Sequence[tuple[int, int]], video: bool
) -> None:
    """The mask graph's output equals the argmax of the (parity-checked) logits graph's on
    every check batch, exactly."""
    import numpy as np

    from ccnet.export.parity import CLIP_FRAMES, ParityError, onnxruntime_session, sample_batch

    with_mask, with_logits = onnxruntime_session(masked), onnxruntime_session(logits)
    name = with_logits.get_inputs()[0].name
    for index, (height, width) in enumerate(sizes):
        frames = CLIP_FRAMES[index % len(CLIP_FRAMES)] if video else None
        batch, _ = sample_batch(height, width, frames=frames)
        (mask,) = with_mask.run(None, {name: batch})
        (reference,) = with_logits.run(None, {name: batch})
        expected = reference.argmax(axis=1)
        if mask.shape != expected.shape or not np.array_equal(mask, expected):
            agree = float((mask == expected).mean()) if mask.shape == expected.shape else 0.0
            raise ParityError(
                f"the mask graph disagrees with the argmax of the logits graph at "
                f"{height}×{width} ({agree:.4%} equal); nothing was written"
            )


def export_onnx_model(
    model: CCNet,
    meta: Mapping[str, Any],
    output_dir: str | os.PathLike[str],
    *,
    dtype: str = "fp32",
    opset: int = DEFAULT_OPSET,
    check_sizes: Sequence[tuple[int, int]] | None = None,
    fp16_min_agreement: float | None = None,
    output: str = "logits",
    source: str = "in-memory model",
    progress: Progress | None = None,
) -> OnnxExport:
    """Export an in-memory model with its checkpoint metadata (see ``export_onnx``).

    ``model`` is put in eval mode (the export and the parity reference are inference).
    """
    import numpy as np
    import torch

    from ccnet.export.graph_capture import DTYPES, ExportableModel, capture_onnx
    from ccnet.export.onnx_functions import attach_functions
    from ccnet.export.parity import DEFAULT_CHECK_SIZES, check_onnx, onnx_criterion
    from ccnet.export.runtime.sidecar import sidecar_path
    from ccnet.model import Normalization
    from ccnet.model.files import ensure_writable_dir, write_files_atomic

    sizes = list(check_sizes or DEFAULT_CHECK_SIZES)
    _validate(dtype, opset, sizes, fp16_min_agreement, output)
    _require_export_tools()
    say = progress or silent
    out = ensure_writable_dir(output_dir)
    normalization = Normalization(**meta["normalization"])
    video = bool(meta["config"].get("video"))
    model = model.eval()

    began = time.perf_counter()
    name = meta["config"].get("name", type(model).__name__)
    say(f"exporting {name} ({dtype}, opset {opset}) with torch.onnx (dynamo)…")
    exportable = ExportableModel(model, normalization, DTYPES[dtype])
    proto = capture_onnx(exportable, opset)
    attach_functions(proto)
    for key, value in (("classes", meta["classes"]), ("palette", meta["palette"])):
        proto.metadata_props.add(key=f"ccnet.{key}", value=json.dumps(value))
    _check_graph(proto)
    ops = ", ".join(f"{op} ×{len(nodes)}" for op, nodes in _group_attention(proto).items())
    say(
        f"  graph: {len(proto.graph.node)} nodes, {ops or 'no attention node (recurrence 0)'}, "
        f"checker ok, {time.perf_counter() - began:.1f} s"
    )

    def reference(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = normalization.normalize(torch.from_numpy(batch), channel_dim=1)
            return model(x).float().numpy()

    data = proto.SerializeToString()
    say("checking against PyTorch with ONNX Runtime (noise + astronaut + coffee, two sizes)…")
    report = check_onnx(
        data,
        reference,
        dtype=dtype,
        video=video,
        sizes=sizes,
        criterion=onnx_criterion(dtype, fp16_min_agreement),
        progress=say,
    )
    hint = (
        " (an untrained model has near-tied logits everywhere and may need --fp16-min-agreement)"
        if dtype == "fp16"
        else ""
    )
    report.raise_if_failed(f"{dtype} export of {name}{hint}", out)
    if output == "mask":
        proto = _append_argmax(proto, len(meta["classes"]))
        _check_graph(proto)
        mask_data = proto.SerializeToString()
        _check_mask_graph(mask_data, data, sizes, video)
        data = mask_data
        say(f"  appended ArgMax: the file returns the {proto.graph.output[0].name!r} output")

    sidecar = _build_sidecar(
        proto, data, meta, dtype=dtype, report=report.to_dict(), source=source, output=output
    )
    model_path = out / MODEL_FILE
    side_path = sidecar_path(model_path)
    text = json.dumps(sidecar, indent=2) + "\n"
    write_files_atomic({model_path: data, side_path: text.encode("utf-8")})
    say(f"wrote {model_path} ({len(data) / 1e6:.1f} MB) and {side_path.name}")
    return OnnxExport(model_path, side_path, sidecar)


def export_onnx(
    checkpoint: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    dtype: str = "fp32",
    opset: int = DEFAULT_OPSET,
    check_sizes: Sequence[tuple[int, int]] | None = None,
    fp16_min_agreement: float | None = None,
    output: str = "logits",
    progress: Progress | None = to_stderr,
) -> OnnxExport:
    """Export a checkpoint to ``output_dir/model.onnx`` + ``model.json``, verified first.

    Args:
        checkpoint: a checkpoint written by this project (``save_checkpoint``).
        output_dir: created if needed; an existing ``model.onnx`` is replaced atomically.
        dtype: "fp32" or "fp16" (the network's precision; I/O stays float32).
        opset: default-domain ONNX opset, 18..23.
        check_sizes: the two (or more) (height, width) sizes of the parity check.
        fp16_min_agreement: for fp16, the argmax agreement required instead of 99.9% (an
            untrained model's near-tied logits may need less; the sidecar records it).
        output: "logits" (float32, ``(N, K, H, W)``) or "mask" (class ids ``(N, H, W)``,
            uint8 for up to 256 classes).
        progress: receives progress lines (stderr by default; None for silence).

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        OSError: the output directory cannot be written.
        ValueError: a corrupt checkpoint, bad arguments, a failed graph check, or
            ``export.parity.ParityError`` when ONNX Runtime and PyTorch disagree (then nothing
            was written).
    """
    from ccnet.export.parity import DEFAULT_CHECK_SIZES
    from ccnet.model import load_checkpoint

    sizes = list(check_sizes or DEFAULT_CHECK_SIZES)
    _validate(dtype, opset, sizes, fp16_min_agreement, output)  # before the checkpoint is read
    model, meta = load_checkpoint(checkpoint)
    return export_onnx_model(
        model,
        meta,
        output_dir,
        dtype=dtype,
        opset=opset,
        check_sizes=sizes,
        fp16_min_agreement=fp16_min_agreement,
        output=output,
        source=str(checkpoint),
        progress=progress,
    )
