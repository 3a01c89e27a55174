"""``ccnet export onnx | tensorrt | triton``: argument parsing and dispatch only.

The work lives in ``export.onnx``, ``export.engine`` and ``export.triton``, imported by the
handlers so that ``ccnet --help`` does not load torch.onnx, onnxruntime or TensorRT.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``export`` and its subcommands to the ``ccnet`` parser."""
    export = commands.add_parser(
        "export",
        help="export a checkpoint: ONNX, TensorRT engine, Triton model repository",
        description="Export for deployment. `onnx` writes a verified model.onnx + model.json; "
        "`tensorrt` builds an engine from it with the criss-cross attention plugin; `triton` "
        "writes a Triton model repository.",
    )
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    _register_onnx(targets)
    _register_tensorrt(targets)
    _register_triton(targets)
    _register_stream(targets)


# ---------------------------------------------------------------------------- argument types


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW such as 192x256, got {text!r}")
    height, width = int(parts[0]), int(parts[1])
    if height < 8 or width < 8:
        raise argparse.ArgumentTypeError(f"sizes must be at least 8x8, got {text!r}")
    return height, width


def _shape(text: str) -> tuple[int, ...]:
    from ccnet.export.engine import parse_shape  # light: no TensorRT import

    try:
        return parse_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _add_precision(parser: argparse.ArgumentParser) -> None:
    from ccnet.export.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET  # module constants only

    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16"),
        default="fp32",
        help="network precision (input and logits stay float32); fp16 for fp16 TensorRT engines",
    )
    parser.add_argument(
        "--opset",
        type=int,
        choices=range(MIN_OPSET, MAX_OPSET + 1),
        default=DEFAULT_OPSET,
        metavar=f"{{{MIN_OPSET}..{MAX_OPSET}}}",
        help=f"ONNX opset of the default domain (default {DEFAULT_OPSET})",
    )


# ---------------------------------------------------------------------------- onnx


def _register_onnx(targets: argparse._SubParsersAction) -> None:
    onnx = targets.add_parser(
        "onnx",
        help="checkpoint -> model.onnx + model.json, checked against PyTorch",
        description="Export with dynamic batch, height and width (and frames for CCNet3D), "
        "input normalisation inside the graph, one ccnet::CrissCrossAttention node per "
        "attention (with an ONNX local function). ONNX Runtime is compared with PyTorch on "
        "noise and real photographs at two sizes before anything is written.",
    )
    onnx.add_argument("checkpoint", metavar="CKPT", help="a checkpoint written by this project")
    onnx.add_argument(
        "-o", "--out", dest="output_dir", required=True, metavar="DIR", help="output directory"
    )
    _add_precision(onnx)
    onnx.add_argument(
        "--check-size",
        type=_size,
        action="append",
        metavar="HxW",
        help="a parity-check size (repeat; at least two different; default 192x256 and 225x167)",
    )
    onnx.add_argument(
        "--fp16-min-agreement",
        type=_fraction,
        metavar="FRACTION",
        help="fp16 only: argmax agreement with PyTorch required on the pixels fp16 can "
        "resolve (fp32 top-2 margin above 2^-10 x the logit scale; default 0.999); untrained "
        "models have near-tied logits and may need less. Recorded in model.json",
    )
    onnx.add_argument(
        "--output",
        choices=("logits", "mask"),
        default="logits",
        help="what the file returns: float32 logits (N,K,H,W), or the class-id mask (N,H,W), "
        "uint8, from an ArgMax appended to the graph (default logits; the service needs "
        "logits)",
    )
    onnx.set_defaults(handler=_cmd_onnx)


def _cmd_onnx(args: argparse.Namespace) -> None:
    from ccnet.export.onnx import export_onnx

    result = export_onnx(
        args.checkpoint,
        args.output_dir,
        dtype=args.dtype,
        opset=args.opset,
        check_sizes=args.check_size,
        fp16_min_agreement=args.fp16_min_agreement,
        output=args.output,
    )
    print(json.dumps(_summary(result.sidecar, result.model_path), indent=2))


_PARITY_FIELDS = (
    "shape",
    "relative_error",
    "argmax_agreement",
    "resolved_agreement",
    "unresolved_fraction",
)


def _summary(sidecar: dict, path: object) -> dict:
    return {
        "model": str(path),
        "dtype": sidecar["dtype"],
        "output": sidecar.get("output", "logits"),
        "opset": sidecar["opset"],
        "inputs": sidecar["inputs"],
        "outputs": sidecar["outputs"],
        "custom_ops": [
            f"{op['domain']}::{op['op_type']} ×{op['nodes']}" for op in sidecar["custom_ops"]
        ],
        "parity": [
            {k: case[k] for k in _PARITY_FIELDS if k in case} for case in sidecar["parity"]["cases"]
        ],
    }


# ---------------------------------------------------------------------------- stream


def _register_stream(targets: argparse._SubParsersAction) -> None:
    stream = targets.add_parser(
        "stream",
        help="CCNet3D checkpoint -> the two graphs of live streaming, checked against PyTorch",
        description="Write stream_frame.onnx (one frame -> its cached state), "
        "stream_window.onnx (a window of states -> one frame's logits) and stream.json, for "
        "`StreamSegmenter.from_file(DIR)` and `WS /v1/stream` on onnxruntime (put them beside "
        "the served model.onnx).",
    )
    stream.add_argument("checkpoint", metavar="CKPT", help="a CCNet3D checkpoint")
    stream.add_argument(
        "-o", "--out", dest="output_dir", required=True, metavar="DIR", help="output directory"
    )
    stream.set_defaults(handler=_cmd_stream)


def _cmd_stream(args: argparse.Namespace) -> None:
    from ccnet.export.stream_onnx import export_stream

    print(json.dumps({"sidecar": str(export_stream(args.checkpoint, args.output_dir))}))


# ---------------------------------------------------------------------------- tensorrt


def _register_tensorrt(targets: argparse._SubParsersAction) -> None:
    trt = targets.add_parser(
        "tensorrt",
        help="model.onnx -> TensorRT engine with the criss-cross attention plugin",
        description="Build a TensorRT engine (strongly typed: an fp16 engine needs the fp16 "
        "ONNX) with one optimisation profile, check it against ONNX Runtime at the --opt "
        "shape, and write it with an engine.json sidecar. Needs TensorRT and a CUDA GPU.",
    )
    trt.add_argument("onnx", metavar="ONNX", help="model.onnx written by `ccnet export onnx`")
    trt.add_argument(
        "-o", "--out", dest="output", required=True, metavar="PLAN", help="engine file to write"
    )
    for bound, example in (
        ("min", "1x3x128x128"),
        ("opt", "1x3x512x512"),
        ("max", "4x3x1024x1024"),
    ):
        trt.add_argument(
            f"--{bound}",
            required=True,
            type=_shape,
            metavar="NxCx[T]xHxW",
            help=f"{bound} input shape of the profile, e.g. {example} (clips: 1x3x4x256x256)",
        )
    trt.add_argument(
        "--plugin",
        metavar="LIB",
        help="libccnet_trt_plugin.so (default: $CCNET_TRT_PLUGIN, else build/trt/ if built; "
        "without it attention runs as standard TensorRT layers)",
    )
    trt.add_argument("--workspace", type=_positive_float, metavar="GiB", help="workspace limit")
    trt.set_defaults(handler=_cmd_tensorrt)


def _cmd_tensorrt(args: argparse.Namespace) -> None:
    from ccnet.export.engine import ShapeProfile, build_engine

    profile = ShapeProfile(args.min, args.opt, args.max)  # argument errors before the TRT check
    result = build_engine(
        args.onnx, args.output, profile, plugin=args.plugin, workspace_gib=args.workspace
    )
    case = result.sidecar["check"]["cases"][0]
    print(
        json.dumps(
            {
                "engine": str(result.engine_path),
                "plugin": result.sidecar["plugin"],
                "profile": result.sidecar["profile"],
                "check": {k: case[k] for k in ("shape", "relative_error", "argmax_agreement")},
            },
            indent=2,
        )
    )


# ---------------------------------------------------------------------------- triton


def _register_triton(targets: argparse._SubParsersAction) -> None:
    from ccnet.export.triton import DEFAULT_MAX_BATCH, INTERFACES

    triton = targets.add_parser(
        "triton",
        help="write a Triton model repository (ONNX Runtime or TensorRT model)",
        description="Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx (or model.plan "
        "with --engine) with dynamic dims and dynamic batching, and REPO/README.md with the "
        "command lines (plugin loading for engines). A checkpoint is exported to ONNX first. "
        "An image model in ONNX speaks `ccnet serve`'s /v2 by default: `image` UINT8 "
        "[N,H,W,3] in, `mask` UINT8 [N,H,W] out, padding, crop and argmax in the graph.",
    )
    triton.add_argument(
        "source", metavar="CKPT_OR_ONNX", help="model.onnx (with model.json), or a checkpoint"
    )
    triton.add_argument(
        "-o", "--out", dest="output", required=True, metavar="REPO", help="repository dir"
    )
    triton.add_argument("--name", required=True, help="the model's name in Triton")
    triton.add_argument(
        "--engine", metavar="PLAN", help="a TensorRT engine built from that ONNX (tensorrt_plan)"
    )
    triton.add_argument(
        "--max-batch",
        type=_non_negative,
        default=DEFAULT_MAX_BATCH,
        metavar="N",
        help=f"Triton max_batch_size (default {DEFAULT_MAX_BATCH}; 0 = no batching)",
    )
    triton.add_argument(
        "--interface",
        choices=INTERFACES,
        help="image: UINT8 [N,H,W,3] in, mask UINT8 [N,H,W] out, as ccnet serve's /v2 (the "
        "default for image models in ONNX); tensor: the network's float32 [N,3,H,W] in "
        "(H and W padded to a multiple of 8 by the client), logits out (clip models, engines)",
    )
    triton.add_argument(
        "--logits",
        action="store_true",
        help="image interface: also a `logits` output, FP32 [N,K,H,W] (Triton returns every "
        "output to a request that names none, so clients should name `mask`)",
    )
    _add_precision(triton)
    triton.set_defaults(handler=_cmd_triton)


def _cmd_triton(args: argparse.Namespace) -> None:
    from ccnet.export.triton import write_triton_repository

    result = write_triton_repository(
        args.source,
        args.output,
        args.name,
        engine=args.engine,
        max_batch=args.max_batch,
        dtype=args.dtype,
        opset=args.opset,
        interface=args.interface,
        logits=args.logits,
    )
    print(
        json.dumps(
            {
                "repository": str(result.repository),
                "model": str(result.model_dir),
                "platform": result.platform,
                "config": result.config_path.read_text(encoding="utf-8"),
            },
            indent=2,
        )
    )
