"""``ccnet predict``: segment image and clip files from the shell with the inference library.

Also the argparse helpers every ``ccnet`` subcommand shares (``HelpFormatter``, value types).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from ccnet.inference.demo import BUNDLED_MODELS
from ccnet.inference.options import BACKENDS, PRECISIONS
from ccnet.model.samples import SAMPLE_IMAGES, sample_photograph

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
        choices=tuple(_OUTPUT_KINDS),
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
    predict.set_defaults(handler=_cmd_predict)


class _Models:
    """The image and clip segmenters, loaded on first use (a run with only images never loads
    the clip model)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._image: Any = None
        self._clip: Any = None

    def options(self) -> Any:
        from ccnet.inference.options import LoadOptions

        # the command is an entry point: CCNET_PRECISION, CCNET_CACHE_DIR and CCNET_TRT_PLUGIN
        # apply as they do to `ccnet serve` (--precision wins)
        precision = self.args.precision or os.environ.get("CCNET_PRECISION") or "auto"
        if precision not in PRECISIONS:
            raise ValueError(
                f"CCNET_PRECISION={precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        cache_dir = os.environ.get("CCNET_CACHE_DIR")
        plugin = os.environ.get("CCNET_TRT_PLUGIN")
        return LoadOptions(
            backend=self.args.backend,
            cache_dir=Path(cache_dir).expanduser() if cache_dir else LoadOptions().cache_dir,
            trt_plugin=Path(plugin).expanduser() if plugin else None,
            device=self.args.device,
            precision=precision,
            max_side=max(8, self.args.max_side),
            max_video_side=max(8, self.args.max_video_side),
        )

    def image(self) -> Any:
        from ccnet.inference.facade import open_backend
        from ccnet.inference.segmenter import Segmenter

        if self._image is None:
            if self.args.untrained:
                self._image = self._untrained(self.args.model)
            else:
                path = Path(self.args.checkpoint or self._bundled() or BUNDLED_MODELS[0])
                backend = open_backend(path, self.options())
                if backend.info.kind != "image":
                    backend.close()
                    raise ValueError(
                        f"{path}: a video (CCNet3D) model; pass it as --video-checkpoint"
                    )
                self._image = Segmenter(backend, max_side=self.args.max_side)
        return self._image

    def _bundled(self) -> Path | None:
        """The bundled weights ``--model NAME`` means (None without --model): a name never
        silently means untrained weights."""
        from ccnet.inference.demo import bundled_model

        name = self.args.model
        if name is None:
            return None
        path = bundled_model(name)
        if path is None:
            names = ", ".join(p.stem for p in BUNDLED_MODELS)
            raise ValueError(
                f"--model {name}: no bundled weights for this name (bundled: {names}); give "
                "--checkpoint FILE, or add --untrained for freshly initialised weights"
            )
        return path

    def _untrained(self, name: str | None) -> Any:
        from ccnet.inference.segmenter import Segmenter
        from ccnet.model import build_model

        if name is None:
            raise ValueError("--untrained needs --model NAME (the zoo configuration to build)")
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
        from ccnet.inference.facade import open_backend
        from ccnet.inference.segmenter import ClipSegmenter

        if self._clip is None:
            path = Path(self.args.video_checkpoint or BUNDLED_MODELS[1])
            backend = open_backend(path, self.options())
            if backend.info.kind != "video":
                backend.close()
                raise ValueError(f"{path}: an image model; --video-checkpoint needs CCNet3D")
            self._clip = ClipSegmenter(backend, max_side=self.args.max_video_side)
        return self._clip


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
    from ccnet.inference.codecs import IMAGE_SUFFIXES
    from ccnet.inference.video import VIDEO_SUFFIXES

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
    from ccnet.inference.video import VIDEO_SUFFIXES

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
    from ccnet.model.files import write_bytes_atomic

    target = out_dir / item.target.parent / f"{item.target.name}{rendered.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, rendered.body)
    return str(target)


def _options(args: argparse.Namespace, clip_format: str = "mp4") -> Any:
    from ccnet.inference.render import RenderOptions

    return RenderOptions(
        alpha=args.alpha, clip_format=clip_format, legend=args.legend, rle=True, pretty=True
    )


def _predict_image(item: _Item, models: _Models, args: argparse.Namespace, out_dir: Path) -> dict:
    from ccnet.inference.render import render_image
    from ccnet.inference.segmenter import as_rgb

    assert item.sample is not None or item.path is not None
    rgb = sample_photograph(item.sample) if item.sample else as_rgb(item.path)  # type: ignore[arg-type]
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
    from ccnet.inference.render import render_clip
    from ccnet.inference.segmenter import read_clip

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

    from ccnet.inference.codecs import ImageDecodeError, ImageTooLargeError
    from ccnet.inference.video import VideoDecodeError, VideoTooLargeError

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
