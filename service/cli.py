"""``ccnet serve`` (the HTTP service) and ``ccnet predict`` (the same pipeline on files)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

__all__ = ["SAMPLE_IMAGES", "HelpFormatter", "register"]

SAMPLE_IMAGES = ("astronaut", "coffee", "camera")
_ASSETS = Path(__file__).resolve().parent / "assets"
_PRECISIONS = ("auto", "fp32", "bf16", "int8", "fp16")  # service.backends.precision.PRECISIONS


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``ccnet`` parser."""
    _register_serve(commands)
    _register_predict(commands)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default, except where there is none to show (unset
    optional values, switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        return super()._get_help_string(action) or text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


# ---------------------------------------------------------------------------- serve


def _register_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="start the HTTP segmentation service",
        description="Serve image (CCNet) and clip (CCNet3D) segmentation over HTTP. With no "
        "--model the bundled demo models ccnet-tiny and ccnet3d-tiny are served. Every flag "
        "has a CCNET_* environment variable (CCNET_API_KEY sets the API key); flags win.",
    )
    serve.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]PATH",
        help="a checkpoint (.pt), ONNX export (.onnx) or TensorRT engine (.engine/.plan); "
        "repeat for several models (default: the bundled demo models)",
    )
    serve.add_argument(
        "--model-dir", help="also serve every model file in this directory (default: none)"
    )
    serve.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "tensorrt"),
        help="default: each file's own (.pt torch, .onnx onnxruntime, .engine tensorrt)",
    )
    serve.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="where to run (default auto)"
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=_positive_int, help="worker processes (default 1)")
    serve.add_argument(
        "--inference-workers",
        type=int,
        help="forward passes in parallel per image model (default 0 = one per CPU core; 1 on "
        "a GPU)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        help="intra-op threads per forward pass (default 0 = cores / workers)",
    )
    serve.add_argument(
        "--max-batch-size", type=_positive_int, help="images per forward pass at most (default 8)"
    )
    serve.add_argument(
        "--max-batch-wait-ms",
        type=float,
        help="how long a batch's first image waits for company (default 2)",
    )
    serve.add_argument(
        "--queue-size",
        type=_positive_int,
        help="image requests waiting per model before new ones get 503 (default 64)",
    )
    serve.add_argument(
        "--precision",
        choices=_PRECISIONS,
        help="auto (default): the fastest path passing the parity gate on this machine; "
        "fp32, bf16 (torch, CPU), int8 (onnxruntime, CPU), fp16 (CUDA)",
    )
    serve.add_argument(
        "--cache-dir",
        help="where ONNX exports and TensorRT engines are cached (default ~/.cache/ccnet)",
    )
    serve.add_argument(
        "--log-format", choices=("json", "text"), help="log lines as JSON or text (default json)"
    )
    serve.set_defaults(handler=_cmd_serve)


def _settings_env(args: argparse.Namespace) -> dict[str, str]:
    """The CCNET_* variables that carry the flags to every worker process."""
    env = {}
    if args.model:
        env["CCNET_MODELS"] = ",".join(args.model)
    for flag in (
        "model_dir",
        "backend",
        "device",
        "host",
        "port",
        "workers",
        "threads",
        "inference_workers",
        "max_batch_size",
        "max_batch_wait_ms",
        "queue_size",
        "precision",
        "cache_dir",
        "log_format",
    ):
        value = getattr(args, flag)
        if value is not None:
            env[f"CCNET_{flag.upper()}"] = str(value)
    return env


def _cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn
    from pydantic import ValidationError

    from service.core.config import Settings

    overrides = _settings_env(args)
    environment = {**os.environ, **overrides}
    try:
        settings = Settings(_env_file=None, **_from_environment(environment))
    except ValidationError as error:
        raise ValueError(f"invalid setting: {error}") from None
    for _, path in settings.model_sources():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
    _check_port_free(settings.host, settings.port)
    _prepare_models(settings)
    _check_models_load(settings)
    # only now, when the settings are known to be good: every worker reads them from here
    os.environ.update(overrides)
    uvicorn.run(
        "service.cli:serving_app",  # the app, with a preparer for hot reloads
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,  # the app configures structured logging itself
        access_log=False,
        timeout_graceful_shutdown=30,
        # connection limits (header/body timeouts, cap): service/core/http_protocol.py
        http="service.core.http_protocol:GuardedH11Protocol",
        timeout_keep_alive=settings.keepalive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def _prepare_models(settings: Any) -> None:
    """Export and build every model's artifact once, here, before uvicorn starts the workers:
    they only look it up in the cache (``export.runtime.artifacts``) and load it."""
    from export.prepare import prepare_served
    from service.backends.loading import effective_backend

    for _, path in settings.model_sources():
        prepare_served(
            path,
            effective_backend(path, settings),
            settings,
            progress=lambda line: print(f"ccnet serve: {line}", file=sys.stderr, flush=True),
        )


def serving_app() -> Any:
    """The uvicorn factory of ``ccnet serve``: the app, given ``_prepare_for_reload`` so a
    checkpoint copied into the models folder later is exported (and its engine built) as
    ``ccnet serve`` did for the first ones. The app never imports the export build side
    itself; this command does, in each worker, only when a reload needs it."""
    from service.main import create_app

    return create_app(preparer=_prepare_for_reload)


def _prepare_for_reload(path: Path, settings: Any) -> None:
    """``export.prepare.prepare_served`` for one reloaded file, under a lock in the cache, so
    the uvicorn workers (each with its own watcher) export and build once: the first holds
    the lock while it works, the others then find the artifact cached."""
    import fcntl

    from export.prepare import prepare_served
    from service.backends.loading import effective_backend

    backend = effective_backend(path, settings)
    if backend == "torch":
        return
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    with (settings.cache_dir / ".reload-prepare.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            prepare_served(path, backend, settings)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_models_load(settings: Any) -> None:
    """Load (and release) every model once here, so a file that cannot be served fails the
    command with exit status 2 and one line, before a worker starts and logs "ready"."""
    from service.backends import BackendError, load_backend

    for name, path in settings.model_sources():
        try:
            load_backend(name, path, settings).close()
        except BackendError as error:
            raise ValueError(str(error)) from None
        except (RuntimeError, KeyError, TypeError) as error:  # a library's own load error
            raise ValueError(f"{path}: cannot be loaded: {error}") from None


def _check_port_free(host: str, port: int) -> None:
    """Fail now, with one line, if ``host:port`` cannot be listened on (in use, no such
    address), rather than after the workers have loaded the models."""
    import socket

    if port == 0:
        return  # the system picks a free port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = error.strerror or str(error)
            raise ValueError(f"cannot listen on {host}:{port}: {reason}") from None


def _from_environment(environment: dict[str, str]) -> dict[str, str]:
    """Settings fields from CCNET_* variables, for validating before they are exported."""
    prefix = "CCNET_"
    return {
        key[len(prefix) :].lower(): value
        for key, value in environment.items()
        if key.startswith(prefix)
    }


# ---------------------------------------------------------------------------- predict

_OUTPUT_KINDS = {  # --output → what is written for an image and for a clip
    "png": (("png",), ("zip",)),
    "overlay": (("overlay",), ("overlay",)),
    "json": (("json",), ("json",)),
    "both": (("png", "overlay"), ("zip", "overlay")),
    "all": (("png", "overlay", "json"), ("zip", "overlay", "json")),
}


def _register_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="segment image and clip files or folders; write masks / overlays / JSON",
        description="Segment files offline with the service's pipeline (the Python API's "
        "Segmenter). Folders are searched recursively for images and clips; the results "
        "mirror the inputs' relative paths under --output-dir (an absolute path, or one "
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
    predict.add_argument("-o", "--output-dir", required=True, help="directory for the results")
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
        help="image model: a zoo name, built with untrained weights (a pipeline check)",
    )
    predict.add_argument(
        "--video-checkpoint",
        metavar="FILE",
        help="clip model file (default: the bundled ccnet3d-tiny)",
    )
    predict.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "tensorrt"),
        help="default: the model file's own (.pt torch, .onnx onnxruntime, .engine tensorrt)",
    )
    predict.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run"
    )
    predict.add_argument(
        "--precision",
        choices=_PRECISIONS,
        help="auto: the fastest path passing the parity gate here (default, or "
        "CCNET_PRECISION); fp32, bf16 (torch, CPU), int8 (onnxruntime, CPU), fp16 (CUDA)",
    )
    predict.add_argument(
        "--output",
        choices=tuple(_OUTPUT_KINDS),
        default="both",
        help="png: masks (a zip for clips); both = png + overlay; all = both + json",
    )
    predict.add_argument("--alpha", type=_unit_float, default=0.5, help="overlay opacity (0-1)")
    predict.add_argument(
        "--legend", action="store_true", help="draw a legend of the classes on overlays"
    )
    predict.add_argument(
        "--max-side",
        type=_positive_int,
        default=1024,
        help="images with a longer side are scaled down for inference (masks keep the size)",
    )
    predict.add_argument(
        "--max-video-side",
        type=_positive_int,
        default=512,
        help="clip frames with a longer side are scaled down for inference",
    )
    predict.add_argument(
        "--no-progress", action="store_true", help="no progress bar on stderr (for logs and CI)"
    )
    predict.set_defaults(handler=_cmd_predict)


def _sample(name: str) -> Any:
    try:
        import skimage.data
    except ImportError:
        raise ValueError("--sample needs scikit-image (pip install -e '.[samples]')") from None
    import numpy as np

    image = np.asarray(getattr(skimage.data, name)())
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[..., :3]


class _Models:
    """The image and clip segmenters, loaded on first use (a run with only images never loads
    the clip model)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._image: Any = None
        self._clip: Any = None

    def image(self) -> Any:
        from service.segmenter import Segmenter, open_backend

        if self._image is None:
            if self.args.model is not None:
                self._image = self._untrained(self.args.model)
            else:
                path = Path(self.args.checkpoint or _ASSETS / "ccnet-tiny.pt")
                backend = self._open(open_backend, path)
                if backend.info.kind != "image":
                    backend.close()
                    raise ValueError(
                        f"{path}: a video (CCNet3D) model; pass it as --video-checkpoint"
                    )
                self._image = Segmenter(backend, max_side=self.args.max_side)
        return self._image

    def _untrained(self, name: str) -> Any:
        from model import build_model
        from service.segmenter import Segmenter

        model = build_model(name)
        if model.config is not None and model.config.video:
            raise ValueError(f"--model {name}: a video configuration; image models only")
        print(
            f"note: --model {name} runs with freshly initialised weights: the masks show the "
            "pipeline, not a trained model",
            file=sys.stderr,
        )
        return Segmenter.from_model(model, max_side=self.args.max_side)

    def clip(self) -> Any:
        from service.segmenter import ClipSegmenter, open_backend

        if self._clip is None:
            path = Path(self.args.video_checkpoint or _ASSETS / "ccnet3d-tiny.pt")
            backend = self._open(open_backend, path)
            if backend.info.kind != "video":
                backend.close()
                raise ValueError(f"{path}: an image model; --video-checkpoint needs CCNet3D")
            self._clip = ClipSegmenter(backend, max_side=self.args.max_video_side)
        return self._clip

    def _open(self, open_backend: Callable[..., Any], path: Path) -> Any:
        max_side = max(8, self.args.max_side)
        # --precision wins; without it CCNET_PRECISION (default auto) decides
        chosen = {"precision": self.args.precision} if self.args.precision else {}
        return open_backend(
            path, backend=self.args.backend, device=self.args.device, max_side=max_side, **chosen
        )


@dataclass(frozen=True)
class _Item:
    """One thing to segment: its key in the summary, where its results go, how to read it."""

    key: str  # the input path as given (or the sample's name)
    target: PurePath  # results are written as ``target`` + each output's suffix
    path: Path | None = None
    sample: str | None = None


def _mirrored(path: Path) -> PurePath:
    """Where a path's results go under the output directory: the path itself if it is
    relative and stays below the working directory, else its name alone."""
    if not path.is_absolute() and ".." not in path.parts:
        return PurePath(*path.parts)
    return PurePath(path.resolve().name)


def _collect(args: argparse.Namespace, out_dir: Path) -> list[_Item]:
    """Samples, files and every image or clip below each folder (sorted, hidden skipped,
    the output directory excluded), each with a result path no other input shares."""
    from service.codecs import IMAGE_SUFFIXES
    from service.video import VIDEO_SUFFIXES

    suffixes = {*IMAGE_SUFFIXES, *VIDEO_SUFFIXES}
    found: list[tuple[str, PurePath, Path | None, str | None]] = [
        (name, PurePath(name), None, name) for name in args.sample or []
    ]
    skip = out_dir.resolve()
    for text in args.inputs:
        path = Path(text)
        if path.is_dir():
            files = [
                f
                for f in sorted(path.rglob("*"))
                if f.is_file()
                and f.suffix.lower() in suffixes
                and not any(part.startswith(".") for part in f.relative_to(path).parts)
                and skip not in f.resolve().parents
            ]
            if not files:
                raise ValueError(f"{path}: no image or clip files in this folder")
            base = _mirrored(path)
            found += [(str(f), base / f.relative_to(path), f, None) for f in files]
        else:
            found.append((text, _mirrored(path), path, None))
    return _unique(found)


def _unique(found: list[tuple[str, PurePath, Path | None, str | None]]) -> list[_Item]:
    """Result paths without the inputs' suffixes; where inputs of different types would then
    share one (photo.jpg, photo.png) the suffix is folded in (photo_jpg, photo_png), and a
    result path taken all the same gets _2, _3, ... in input order."""
    stems = [target.with_suffix("") if target.suffix else target for _, target, _, _ in found]
    suffixes: dict[PurePath, set[str]] = {}
    for (_, target, _, _), stem in zip(found, stems, strict=True):
        suffixes.setdefault(stem, set()).add(target.suffix.lower())
    items, taken, seen = [], set(), set()
    for (key, target, path, sample), stem in zip(found, stems, strict=True):
        if key in seen:  # the same file named twice (or by a file and its folder)
            continue
        seen.add(key)
        if len(suffixes[stem]) > 1 and target.suffix:
            stem = stem.with_name(f"{stem.name}_{target.suffix[1:].lower()}")
        candidate, index = stem, 2
        while candidate in taken:
            candidate, index = stem.with_name(f"{stem.name}_{index}"), index + 1
        taken.add(candidate)
        items.append(_Item(key, candidate, path, sample))
    return items


def _is_clip(path: Path) -> bool:
    from service.video import VIDEO_SUFFIXES

    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    if path.suffix.lower() != ".gif":
        return False
    from PIL import Image

    try:
        with Image.open(path) as image:
            return getattr(image, "n_frames", 1) > 1
    except OSError:
        return False


def _write(out_dir: Path, item: _Item, rendered: Any) -> str:
    from model.files import write_bytes_atomic

    target = out_dir / item.target.parent / f"{item.target.name}{rendered.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, rendered.body)
    return str(target)


def _options(args: argparse.Namespace, clip_format: str = "mp4") -> Any:
    from service.outputs import RenderOptions

    return RenderOptions(
        alpha=args.alpha, clip_format=clip_format, legend=args.legend, rle=True, pretty=True
    )


def _predict_image(item: _Item, models: _Models, args: argparse.Namespace, out_dir: Path) -> dict:
    from service.outputs import render_image
    from service.segmenter import as_rgb

    assert item.sample is not None or item.path is not None
    rgb = _sample(item.sample) if item.sample else as_rgb(item.path)  # type: ignore[arg-type]
    segmenter = models.image()
    result = segmenter(rgb)
    info = segmenter.info
    options = _options(args)
    written = [
        _write(
            out_dir, item, render_image(kind, rgb, result.mask, info, result.inference_ms, options)
        )
        for kind in _OUTPUT_KINDS[args.output][0]
    ]
    return {
        "model": info.name,
        "size": list(rgb.shape[1::-1]),
        "inference_ms": round(result.inference_ms, 1),
        "class_fractions": {k: round(v, 4) for k, v in result.class_fractions().items()},
        "files": written,
    }


def _predict_clip(item: _Item, models: _Models, args: argparse.Namespace, out_dir: Path) -> dict:
    from service.outputs import render_clip
    from service.segmenter import read_clip

    assert item.path is not None
    clip = read_clip(item.path)
    segmenter = models.clip()
    result = segmenter.segment(clip.frames)
    info = segmenter.info
    options = _options(args, "gif" if item.path.suffix.lower() == ".gif" else "mp4")
    written = [
        _write(out_dir, item, render_clip(kind, clip.frames, clip.fps, result, info, options))
        for kind in _OUTPUT_KINDS[args.output][1]
    ]
    return {
        "model": info.name,
        "frames": int(result.masks.shape[0]),
        "size": [int(result.masks.shape[2]), int(result.masks.shape[1])],
        "inference_ms": round(result.inference_ms, 1),
        "class_fractions": {
            k: round(v, 4) for k, v in result.class_fractions(info.classes).items()
        },
        "files": written,
    }


def _cmd_predict(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from service.codecs import ImageDecodeError, ImageTooLargeError
    from service.video import VideoDecodeError, VideoTooLargeError

    out_dir = Path(args.output_dir)
    items = _collect(args, out_dir)
    if not items:
        raise ValueError("nothing to segment: give image or clip files or folders, or --sample")
    models = _Models(args)
    summary: dict[str, Any] = {}
    failures = 0
    progress = tqdm(
        items, desc="segmenting", unit="file", file=sys.stderr, disable=args.no_progress
    )
    for item in progress:
        try:
            if item.path is not None and not item.path.is_file():
                raise ImageDecodeError(f"{item.path}: no such file")
            if item.path is not None and _is_clip(item.path):
                summary[item.key] = _predict_clip(item, models, args, out_dir)
            else:
                summary[item.key] = _predict_image(item, models, args, out_dir)
        except (
            ImageDecodeError,
            ImageTooLargeError,
            VideoDecodeError,
            VideoTooLargeError,
        ) as error:
            text = str(error)
            message = (
                text if item.path is None or str(item.path) in text else f"{item.path}: {text}"
            )
            progress.write(f"ccnet predict: error: {message}", file=sys.stderr)
            failures += 1
    print(json.dumps(summary, indent=2))
    if failures:
        raise ValueError(f"{failures} of {len(items)} input(s) could not be segmented")
