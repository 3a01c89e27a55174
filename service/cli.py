"""``ccnet predict``: segment image files offline with the service's pipeline."""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SAMPLE_IMAGES", "register"]

SAMPLE_IMAGES = ("astronaut", "coffee", "camera")


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``ccnet`` parser."""
    predict = commands.add_parser(
        "predict",
        help="segment image files and write masks / overlays",
        description="Segment images with a checkpoint (or a zoo model) and write one mask PNG "
        "(pixel = class id, palette attached) and/or an overlay per image.",
    )
    predict.add_argument("inputs", nargs="*", metavar="IMAGE", help="image files to segment")
    predict.add_argument(
        "--sample",
        action="append",
        choices=SAMPLE_IMAGES,
        help="also segment a sample photograph shipped with scikit-image (repeatable)",
    )
    predict.add_argument("-o", "--output-dir", required=True, help="directory for the results")
    source = predict.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a checkpoint written by this project")
    source.add_argument(
        "--model", default="ccnet-tiny", help="zoo model to build when no checkpoint is given"
    )
    predict.add_argument("--output", choices=("png", "overlay", "both"), default="both")
    predict.add_argument("--alpha", type=_unit_float, default=0.5, help="overlay opacity (0-1)")
    predict.add_argument(
        "--max-side", type=_positive_int, default=1024, help="scale larger images down to this"
    )
    predict.set_defaults(handler=_cmd_predict)


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


def _load_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from model import build_model, load_checkpoint
    from model.checkpoint import complete_meta

    if args.checkpoint is not None:
        return load_checkpoint(args.checkpoint)
    model = build_model(args.model)
    print(
        f"note: no --checkpoint given: {args.model} runs with freshly initialised weights, "
        "so the masks show the pipeline, not a trained model",
        file=sys.stderr,
    )
    return model, complete_meta(model)


def _inputs(args: argparse.Namespace) -> list[tuple[str, Callable[[], Any]]]:
    """(name, loader) pairs for the files and sample photographs to segment."""
    from service.codecs import read_image

    items: list[tuple[str, Callable[[], Any]]] = []
    for sample in args.sample or []:

        def load_sample(sample: str = sample) -> Any:
            try:
                import skimage.data
            except ImportError:
                raise ValueError(
                    "--sample needs scikit-image (pip install -e '.[samples]')"
                ) from None
            import numpy as np

            image = np.asarray(getattr(skimage.data, sample)())
            return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[..., :3]

        items.append((sample, load_sample))
    for path in args.inputs:
        items.append((Path(path).stem, lambda path=path: read_image(path)))
    if not items:
        raise ValueError("nothing to segment: give image files or --sample NAME")
    return items


def _cmd_predict(args: argparse.Namespace) -> None:
    from PIL import Image
    from tqdm import tqdm

    from model.files import write_bytes_atomic
    from service.codecs import ImageDecodeError, ImageTooLargeError, blend_overlay, encode_mask_png
    from service.pipeline import ImageSegmenter

    model, meta = _load_model(args)
    if meta["config"].get("video"):
        raise ValueError("this command segments images; the model is a video (CCNet3D) model")
    segmenter = ImageSegmenter(model, meta, max_side=args.max_side)
    out_dir = Path(args.output_dir)
    summary = {}
    failures = 0
    for name, load in tqdm(_inputs(args), desc="segmenting", unit="image", file=sys.stderr):
        try:
            rgb = load()
        except (ImageDecodeError, ImageTooLargeError) as error:
            print(f"ccnet predict: error: {error}", file=sys.stderr)
            failures += 1
            continue
        result = segmenter.segment(rgb)
        written = []
        if args.output in ("png", "both"):
            path = out_dir / f"{name}_mask.png"
            write_bytes_atomic(path, encode_mask_png(result.mask, result.palette))
            written.append(str(path))
        if args.output in ("overlay", "both"):
            overlay = blend_overlay(rgb, result.mask, result.palette, args.alpha)
            buffer = io.BytesIO()
            Image.fromarray(overlay).save(buffer, format="PNG")
            path = out_dir / f"{name}_overlay.png"
            write_bytes_atomic(path, buffer.getvalue())
            written.append(str(path))
        summary[name] = {
            "size": list(rgb.shape[1::-1]),
            "inference_ms": round(result.inference_ms, 1),
            "class_fractions": {k: round(v, 4) for k, v in result.class_fractions().items()},
            "files": written,
        }
    print(json.dumps(summary, indent=2))
    if failures:
        raise ValueError(f"{failures} input(s) could not be segmented")
