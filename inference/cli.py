"""``ccnet predict``: segment image and clip files from the shell with the inference library.

Also the argparse helpers every ``ccnet`` subcommand shares (``HelpFormatter``, value types).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ccnet.inference.demo import BUNDLED_MODELS, DEMO_CLIP_MODEL
from ccnet.inference.options import BACKENDS, PRECISIONS
from ccnet.inference.predict import OUTPUT_KINDS
from ccnet.model.samples import SAMPLE_IMAGES

__all__ = ["HelpFormatter", "positive_int", "register", "unit_float"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``ccnet predict`` to the ``ccnet`` parser."""
    _register_predict(commands)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default, except where there is none to show (unset
    optional values, switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        return super()._get_help_string(action) or text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


# ---------------------------------------------------------------------------- predict


def _register_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="segment image and clip files or folders; write masks / overlays / JSON",
        description="Segment files offline with the service's pipeline (the Python API's "
        "Segmenter). Folders are searched recursively for images and clips; the results "
        "mirror the inputs' relative paths under --out (an absolute path, or one "
        "with '..', starts from its own name), so no two inputs share a result. Images give a mask "
        "PNG (pixel = class id, palette attached), an overlay and/or JSON statistics; clips "
        "(.mp4 .webm .avi .mov .mkv, animated .gif) give a zip of mask PNGs, an overlay clip "
        "and/or JSON. A JSON summary keyed by input path goes to stdout. The bundled demo "
        "models are used unless a model file is given.",
        formatter_class=HelpFormatter,
    )
    predict.add_argument(
        "inputs", nargs="*", metavar="PATH", help="image or clip files, or folders of them"
    )
    predict.add_argument(
        "--sample",
        action="append",
        choices=SAMPLE_IMAGES,
        help="also segment a sample photograph shipped with scikit-image (repeatable)",
    )
    predict.add_argument(
        "-o", "--out", dest="output_dir", required=True, help="directory for the results"
    )
    source = predict.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="image model: a checkpoint (.pt), ONNX export (.onnx) or engine (.engine/.plan) "
        "(default: the bundled ccnet-tiny)",
    )
    source.add_argument(
        "--model",
        metavar="NAME",
        help="image model: a name with bundled weights (see `ccnet models`), or any zoo name "
        "with --untrained",
    )
    predict.add_argument(
        "--untrained",
        action="store_true",
        help="with --model: freshly initialised weights (a pipeline check, not a model)",
    )
    predict.add_argument(
        "--video-checkpoint",
        metavar="FILE",
        help="clip model file (default: the bundled ccnet3d-tiny)",
    )
    predict.add_argument(
        "--backend",
        choices=BACKENDS,
        help="default: the model file's own (.pt torch, .onnx onnxruntime, .engine tensorrt)",
    )
    predict.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run"
    )
    predict.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="auto: the fastest path passing the parity gate here (default, or "
        "CCNET_PRECISION); fp32, bf16 (torch, CPU), int8 (onnxruntime, CPU), fp16 (CUDA)",
    )
    predict.add_argument(
        "--output",
        choices=tuple(OUTPUT_KINDS),
        default="both",
        help="png: masks (a zip for clips); both = png + overlay; all = both + json",
    )
    predict.add_argument("--alpha", type=unit_float, default=0.5, help="overlay opacity (0-1)")
    predict.add_argument(
        "--legend", action="store_true", help="draw a legend of the classes on overlays"
    )
    predict.add_argument(
        "--max-side",
        type=positive_int,
        default=1024,
        help="images with a longer side are scaled down for inference (masks keep the size)",
    )
    predict.add_argument(
        "--max-video-side",
        type=positive_int,
        default=512,
        help="clip frames with a longer side are scaled down for inference",
    )
    predict.add_argument(
        "--no-progress", action="store_true", help="no progress bar on stderr (for logs and CI)"
    )
    live = predict.add_argument_group("live video (one SOURCE: a file, URL or camera device)")
    live.add_argument(
        "--live",
        action="store_true",
        help="segment SOURCE frame by frame as it plays with the clip model (CCNet3D, "
        "incremental: each frame once, the window on the way); masks are written as they come "
        "and a JSON line per frame goes to stdout",
    )
    live.add_argument(
        "--lookahead",
        type=int,
        default=0,
        help="--live: frames to wait for before a frame is answered (0 = causal, < T)",
    )
    live.add_argument("--max-frames", type=positive_int, help="--live: stop after this many frames")
    live.add_argument(
        "--input-format",
        help="--live: FFmpeg input format for a device (v4l2, avfoundation, dshow)",
    )
    predict.add_argument(
        "--input-list",
        action="append",
        metavar="FILE",
        help="a text file of inputs, one path or URI a line (file://, and s3:// gs:// ... "
        "where pyarrow has the filesystem); relative paths start from the working directory "
        "(repeatable)",
    )
    _register_engine(predict)
    predict.set_defaults(handler=_cmd_predict)


def _register_engine(predict: argparse.ArgumentParser) -> None:
    ray = predict.add_argument_group(
        "--engine ray",
        "Run the same pipeline in a Ray Data actor pool, on this machine or a Ray cluster. "
        "Writes OUT/manifest.parquet and OUT/manifest.jsonl (one row per input, errors "
        "included) and skips inputs an earlier run finished with the same model and options. "
        "Needs pip install 'ccnet-stack[batch]'.",
    )
    ray.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: a Ray Data actor pool",
    )
    ray.add_argument(
        "--address",
        metavar="ADDR",
        help="a running Ray cluster (host:6379, ray://host:10001 or auto; default: "
        "RAY_ADDRESS, else a local Ray started for the job)",
    )
    ray.add_argument("--workers", type=positive_int, default=1, help="actors in the pool")
    ray.add_argument("--batch-size", type=positive_int, default=8, help="inputs per batch")
    ray.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs (threads) each actor reserves"
    )
    ray.add_argument(
        "--num-gpus-per-worker",
        type=float,
        default=0.0,
        help="GPUs each actor reserves (0.5: two actors share one GPU)",
    )


def _bundled(name: str) -> Path:
    """The bundled weights ``--model NAME`` means: a name never silently means untrained
    weights (that takes ``--untrained``)."""
    from ccnet.inference.demo import bundled_model

    path = bundled_model(name)
    if path is None:
        names = ", ".join(p.stem for p in BUNDLED_MODELS)
        raise ValueError(
            f"--model {name}: no bundled weights for this name (bundled: {names}); give "
            "--checkpoint FILE, or add --untrained for freshly initialised weights"
        )
    return path


def _config(args: argparse.Namespace) -> Any:
    """The run's ``PredictConfig`` from the flags and, as for ``ccnet serve``,
    CCNET_PRECISION, CCNET_CACHE_DIR and CCNET_TRT_PLUGIN (--precision wins)."""
    from ccnet.inference.options import LoadOptions
    from ccnet.inference.predict import PredictConfig

    precision = args.precision or os.environ.get("CCNET_PRECISION") or "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"CCNET_PRECISION={precision!r}: choose one of {', '.join(PRECISIONS)}")
    cache_dir = os.environ.get("CCNET_CACHE_DIR")
    plugin = os.environ.get("CCNET_TRT_PLUGIN")
    load = LoadOptions(
        backend=args.backend,
        cache_dir=Path(cache_dir).expanduser() if cache_dir else LoadOptions().cache_dir,
        trt_plugin=Path(plugin).expanduser() if plugin else None,
        device=args.device,
        precision=precision,
        max_side=max(8, args.max_side),
        max_video_side=max(8, args.max_video_side),
    )
    checkpoint, untrained = args.checkpoint, None
    if args.untrained:
        if args.model is None:
            raise ValueError("--untrained needs --model NAME (the zoo configuration to build)")
        untrained = args.model
    elif args.model is not None:
        checkpoint = str(_bundled(args.model))
    return PredictConfig(
        load=load,
        checkpoint=checkpoint,
        model=untrained,
        video_checkpoint=args.video_checkpoint,
        output=args.output,
        alpha=args.alpha,
        legend=args.legend,
        max_side=args.max_side,
        max_video_side=args.max_video_side,
    )


def _cmd_predict(args: argparse.Namespace) -> None:
    from ccnet.inference.predict import collect

    out_dir = Path(args.output_dir)
    if args.live:  # one SOURCE played frame by frame (a URL or a device is no file to collect)
        _predict_live(args, out_dir)
        return
    items = collect(args.inputs, out_dir, args.sample or (), args.input_list or ())
    if not items:
        raise ValueError("nothing to segment: give image or clip files or folders, or --sample")
    config = _config(args)
    ray_flags = {
        "--address": args.address is not None,
        "--workers": args.workers != 1,
        "--batch-size": args.batch_size != 8,
        "--cpus-per-worker": args.cpus_per_worker != 1.0,
        "--num-gpus-per-worker": args.num_gpus_per_worker != 0.0,
    }
    if args.engine != "ray" and any(ray_flags.values()):
        given = ", ".join(flag for flag, set_ in ray_flags.items() if set_)
        raise ValueError(f"{given}: only with --engine ray")
    if args.engine == "ray":
        _predict_on_ray(args, items, config, out_dir)
    else:
        _predict_here(args, items, config, out_dir)


def _predict_here(args: argparse.Namespace, items: list, config: Any, out_dir: Path) -> None:
    """One process: a JSON summary keyed by input on stdout, failures named on stderr."""
    from tqdm import tqdm

    from ccnet.inference.codecs import ImageDecodeError, ImageTooLargeError
    from ccnet.inference.predict import Models, render_item, write_outputs
    from ccnet.inference.video import VideoDecodeError, VideoTooLargeError

    models = Models(config)
    summary: dict[str, Any] = {}
    failures = 0
    progress = tqdm(
        items, desc="segmenting", unit="file", file=sys.stderr, disable=args.no_progress
    )
    for item in progress:
        try:
            rendered = render_item(item, models)
            files = write_outputs(out_dir, item, rendered)
            summary[item.key] = {**rendered.summary, "files": files}
        except (
            ImageDecodeError,
            ImageTooLargeError,
            VideoDecodeError,
            VideoTooLargeError,
        ) as error:
            text = str(error)
            source = item.uri or (str(item.path) if item.path is not None else None)
            message = text if source is None or source in text else f"{source}: {text}"
            progress.write(f"ccnet predict: error: {message}", file=sys.stderr)
            failures += 1
    print(json.dumps(summary, indent=2))
    if failures:
        raise ValueError(f"{failures} of {len(items)} input(s) could not be segmented")


def _predict_live(args: argparse.Namespace, out_dir: Path) -> None:
    """``--live``: one source through a ``StreamSegmenter`` (``inference.live``)."""
    from ccnet.inference.live import run_live
    from ccnet.inference.stream import StreamSegmenter

    if len(args.inputs) != 1 or args.sample:
        raise ValueError("--live segments one SOURCE: a file, a URL or a camera device")
    device = args.device
    if device == "auto":
        from ccnet.inference.backends.torch_backend import resolve_device

        device = resolve_device("auto").type
    live = StreamSegmenter.from_file(
        args.video_checkpoint or DEMO_CLIP_MODEL,
        max_side=max(8, args.max_video_side),
        lookahead=args.lookahead,
        device=device,
    )
    summary = run_live(
        args.inputs[0],
        live,
        out_dir,
        overlay=args.output != "png",
        alpha=args.alpha,
        input_format=args.input_format,
        max_frames=args.max_frames,
    )
    print(json.dumps(summary), file=sys.stderr)


def _predict_on_ray(args: argparse.Namespace, items: list, config: Any, out_dir: Path) -> None:
    """A Ray Data actor pool: the manifest in OUT, a one-object JSON report on stdout."""
    from ccnet.inference.batch import run_batch
    from ccnet.inference.ray_engine import RayOptions, ray_outcomes

    if config.model is not None:
        raise ValueError(
            "--engine ray needs a model file (--checkpoint or --model): --untrained would "
            "build different weights in every worker"
        )
    options = RayOptions(
        address=args.address or os.environ.get("RAY_ADDRESS") or None,
        workers=args.workers,
        batch_size=args.batch_size,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.num_gpus_per_worker,
    )
    report = run_batch(
        items,
        config,
        out_dir,
        lambda todo: ray_outcomes(todo, config, options),
        progress=not args.no_progress,
    )
    print(json.dumps({**vars(report), "seconds": round(report.seconds, 2)}, indent=2))
    if report.failed:
        raise ValueError(
            f"{report.failed} of {report.inputs} input(s) could not be segmented "
            f"(error rows in {report.manifest})"
        )
