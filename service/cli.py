"""``ccnet serve`` (the HTTP service) and ``ccnet predict`` (the same pipeline on files)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SAMPLE_IMAGES", "VIDEO_SUFFIXES", "register"]

SAMPLE_IMAGES = ("astronaut", "coffee", "camera")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".webm", ".avi", ".mov", ".mkv")
_ASSETS = Path(__file__).resolve().parent / "assets"


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``ccnet`` parser."""
    _register_serve(commands)
    _register_predict(commands)


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
        "repeat for several models",
    )
    serve.add_argument("--model-dir", help="also serve every model file in this directory")
    serve.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"))
    serve.add_argument("--device", choices=("auto", "cpu", "cuda"))
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=_positive_int, help="worker processes (default 1)")
    serve.add_argument(
        "--inference-workers",
        type=int,
        help="forward passes in parallel per image model (0 = one per CPU core; 1 on a GPU)",
    )
    serve.add_argument(
        "--threads", type=int, help="intra-op threads per forward pass (0 = cores / workers)"
    )
    serve.add_argument("--max-batch-size", type=_positive_int)
    serve.add_argument("--max-batch-wait-ms", type=float)
    serve.add_argument("--queue-size", type=_positive_int)
    serve.add_argument("--cache-dir", help="where ONNX exports and TensorRT engines are cached")
    serve.add_argument("--log-format", choices=("json", "text"))
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
    # only now, when the settings are known to be good: every worker reads them from here
    os.environ.update(overrides)
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,  # the app configures structured logging itself
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def _from_environment(environment: dict[str, str]) -> dict[str, str]:
    """Settings fields from CCNET_* variables, for validating before they are exported."""
    prefix = "CCNET_"
    return {
        key[len(prefix) :].lower(): value
        for key, value in environment.items()
        if key.startswith(prefix)
    }


# ---------------------------------------------------------------------------- predict


def _register_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="segment image and video files and write masks / overlays / JSON",
        description="Segment files offline with the service's pipeline. Images give a mask "
        "PNG (pixel = class id, palette attached), an overlay PNG and/or JSON statistics; "
        "clips (.mp4 .webm .avi .mov .mkv, animated .gif) give a zip of mask PNGs, an overlay "
        "clip and/or JSON. The bundled demo models are used unless a checkpoint is given.",
    )
    predict.add_argument("inputs", nargs="*", metavar="FILE", help="images or clips to segment")
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
        help="image model: a checkpoint, ONNX export or engine (default: bundled ccnet-tiny)",
    )
    source.add_argument(
        "--model", help="image model: a zoo name, built with untrained weights (pipeline check)"
    )
    predict.add_argument(
        "--video-checkpoint", help="clip model (default: the bundled ccnet3d-tiny)"
    )
    predict.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), default="torch")
    predict.add_argument(
        "--output",
        choices=("png", "overlay", "json", "both"),
        default="both",
        help="both = png + overlay",
    )
    predict.add_argument("--alpha", type=_unit_float, default=0.5, help="overlay opacity (0-1)")
    predict.add_argument(
        "--max-side", type=_positive_int, default=1024, help="scale larger images down to this"
    )
    predict.set_defaults(handler=_cmd_predict)


def _is_clip(path: Path) -> bool:
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


def _sample(name: str) -> Any:
    try:
        import skimage.data
    except ImportError:
        raise ValueError("--sample needs scikit-image (pip install -e '.[samples]')") from None
    import numpy as np

    image = np.asarray(getattr(skimage.data, name)())
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[..., :3]


class _Backends:
    """Loads the image and clip models on first use (a run with only images never loads
    the clip model)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._image: Any = None
        self._video: Any = None

    def _settings(self) -> Any:
        from service.core.config import Settings

        return Settings(backend=self.args.backend, device="auto", max_side=self.args.max_side)

    def image(self) -> Any:
        if self._image is None:
            self._image = self._load_image()
        return self._image

    def _load_image(self) -> Any:
        from service.backends import load_backend

        if self.args.model is not None:
            from model import build_model
            from model.checkpoint import complete_meta
            from service.backends.loading import info_from_meta
            from service.backends.torch_backend import TorchBackend

            model = build_model(self.args.model)
            print(
                f"note: --model {self.args.model} runs with freshly initialised weights: the "
                "masks show the pipeline, not a trained model",
                file=sys.stderr,
            )
            meta = complete_meta(model)
            return TorchBackend(info_from_meta(None, meta, Path(self.args.model)), model, meta)
        path = Path(self.args.checkpoint or _ASSETS / "ccnet-tiny.pt")
        backend = self._load(load_backend, path)
        if backend.info.kind != "image":
            raise ValueError(f"{path}: a video (CCNet3D) model; pass it as --video-checkpoint")
        return backend

    def video(self) -> Any:
        if self._video is None:
            from service.backends import load_backend

            path = Path(self.args.video_checkpoint or _ASSETS / "ccnet3d-tiny.pt")
            self._video = self._load(load_backend, path)
            if self._video.info.kind != "video":
                raise ValueError(f"{path}: an image model; --video-checkpoint needs CCNet3D")
        return self._video

    def _load(self, load_backend: Callable[..., Any], path: Path) -> Any:
        from service.backends import BackendError

        try:
            return load_backend(None, path, self._settings())
        except BackendError as error:
            raise ValueError(str(error)) from None


def _write_image_results(
    name: str, rgb: Any, backend: Any, args: argparse.Namespace, out_dir: Path
) -> dict[str, Any]:
    from model.files import write_bytes_atomic, write_text_atomic
    from service.codecs import encode_mask_png
    from service.outputs import encode_overlay_image, image_json
    from service.pipeline import ImageSegmenter

    result = ImageSegmenter(backend, max_side=args.max_side).segment(rgb)
    info = backend.info
    written = []
    if args.output in ("png", "both"):
        path = out_dir / f"{name}_mask.png"
        write_bytes_atomic(path, encode_mask_png(result.mask, info.palette))
        written.append(str(path))
    if args.output in ("overlay", "both"):
        path = out_dir / f"{name}_overlay.png"
        overlay = encode_overlay_image(rgb, result.mask, info.palette, args.alpha, "png")
        write_bytes_atomic(path, overlay)
        written.append(str(path))
    if args.output == "json":
        path = out_dir / f"{name}.json"
        body = image_json(result.mask, info, result.inference_ms, rle=True)
        write_text_atomic(path, json.dumps(body, indent=2) + "\n")
        written.append(str(path))
    return {
        "model": info.name,
        "size": list(rgb.shape[1::-1]),
        "inference_ms": round(result.inference_ms, 1),
        "class_fractions": {k: round(v, 4) for k, v in result.class_fractions().items()},
        "files": written,
    }


def _write_clip_results(
    name: str, path: Path, backend: Any, args: argparse.Namespace, out_dir: Path
) -> dict[str, Any]:
    from model.files import write_bytes_atomic, write_text_atomic
    from service.codecs import blend_overlay
    from service.outputs import class_entries, clip_json, clip_mask_zip
    from service.pipeline import segment_clip
    from service.video import decode_video, encode_overlay_video

    clip = decode_video(path.read_bytes(), max_frames=100_000, max_pixels=1 << 26)
    result = segment_clip(backend, clip.frames, max_side=args.max_side)
    info = backend.info
    written = []
    if args.output in ("png", "both"):
        target = out_dir / f"{name}_masks.zip"
        write_bytes_atomic(target, clip_mask_zip(result, info, clip.fps))
        written.append(str(target))
    if args.output in ("overlay", "both"):
        fmt = "gif" if path.suffix.lower() == ".gif" else "mp4"
        target = out_dir / f"{name}_overlay.{fmt}"
        blended = blend_overlay(clip.frames, result.masks, info.palette, args.alpha)
        write_bytes_atomic(target, encode_overlay_video(blended, clip.fps, fmt))
        written.append(str(target))
    if args.output == "json":
        target = out_dir / f"{name}.json"
        body = clip_json(result, info, clip.fps)  # what the service answers to output=json
        write_text_atomic(target, json.dumps(body, indent=2) + "\n")
        written.append(str(target))
        stats = body["classes"]
    else:
        stats = class_entries(result.masks, info)
    return {
        "model": info.name,
        "frames": int(result.masks.shape[0]),
        "size": [int(result.masks.shape[2]), int(result.masks.shape[1])],
        "inference_ms": round(result.inference_ms, 1),
        "class_fractions": {s["name"]: round(s["fraction"], 4) for s in stats},
        "files": written,
    }


def _cmd_predict(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from service.codecs import ImageDecodeError, ImageTooLargeError, read_image
    from service.video import VideoDecodeError, VideoTooLargeError

    items: list[tuple[str, Callable[[], Any], Path | None]] = [
        (sample, lambda sample=sample: _sample(sample), None) for sample in args.sample or []
    ]
    for text in args.inputs:
        path = Path(text)
        items.append((path.stem, lambda path=path: read_image(path), path))
    if not items:
        raise ValueError("nothing to segment: give image or clip files, or --sample NAME")
    backends = _Backends(args)
    out_dir = Path(args.output_dir)
    summary: dict[str, Any] = {}
    failures = 0
    for name, load, path in tqdm(items, desc="segmenting", unit="file", file=sys.stderr):
        try:
            if path is not None and not path.is_file():
                raise ImageDecodeError(f"{path}: no such file")
            if path is not None and _is_clip(path):
                summary[name] = _write_clip_results(name, path, backends.video(), args, out_dir)
            else:
                summary[name] = _write_image_results(name, load(), backends.image(), args, out_dir)
        except (
            ImageDecodeError,
            ImageTooLargeError,
            VideoDecodeError,
            VideoTooLargeError,
        ) as error:
            message = str(error) if path is None or str(path) in str(error) else f"{path}: {error}"
            print(f"ccnet predict: error: {message}", file=sys.stderr)
            failures += 1
    print(json.dumps(summary, indent=2))
    if failures:
        raise ValueError(f"{failures} input(s) could not be segmented")
