"""The ``ccnet`` command: one entry point that dispatches to the project's packages.

Each subcommand parses its arguments here and calls a library function; imports of the heavy
packages happen inside the handlers so ``ccnet --help`` stays instant. Every expected failure
(missing file, bad checkpoint, unreadable image, bad value) ends with one line
``ccnet <command>: error: …`` naming the file and the problem, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main"]

SAMPLE_IMAGES = ("astronaut", "coffee", "camera")


class CliError(Exception):
    """An expected failure, reported as one line without a traceback."""


# --------------------------------------------------------------------------- models


def _cmd_models(args: argparse.Namespace) -> None:
    from model import build_model, get_config, list_models

    rows = []
    for name in list_models():
        config = get_config(name)
        params = sum(p.numel() for p in build_model(config).parameters())
        rows.append(
            {
                "name": name,
                "kind": "video" if config.video else "image",
                "backbone": f"ResNet-{config.depth} ({config.flavour}, width {config.width})",
                "output_stride": config.output_stride,
                "params_millions": round(params / 1e6, 2),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<22} {'kind':<6} {'params (M)':>10}  backbone")
    for row in rows:
        print(
            f"{row['name']:<22} {row['kind']:<6} {row['params_millions']:>10.2f}  "
            f"{row['backbone']}, OS{row['output_stride']}"
        )


# --------------------------------------------------------------------------- predict


def _load_model(args: argparse.Namespace):
    from model import build_model, load_checkpoint
    from model.checkpoint import complete_meta

    if args.checkpoint is not None:
        try:
            return load_checkpoint(args.checkpoint)
        except (OSError, ValueError) as error:
            raise CliError(str(error)) from None
    try:
        model = build_model(args.model)
    except ValueError as error:
        raise CliError(str(error)) from None
    print(
        f"note: no --checkpoint given: {args.model} runs with freshly initialised weights, "
        "so the masks show the pipeline, not a trained model",
        file=sys.stderr,
    )
    return model, complete_meta(model)


def _inputs(args: argparse.Namespace) -> list[tuple[str, Callable[[], object]]]:
    """(name, loader) pairs for the files and sample photographs to segment."""
    from service.codecs import read_image

    items: list[tuple[str, Callable[[], object]]] = []
    for sample in args.sample or []:

        def load_sample(sample: str = sample) -> object:
            try:
                import skimage.data
            except ImportError:
                raise CliError(
                    "--sample needs scikit-image (pip install -e '.[samples]')"
                ) from None
            import numpy as np

            image = np.asarray(getattr(skimage.data, sample)())
            return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[..., :3]

        items.append((sample, load_sample))
    for path in args.inputs:
        items.append((Path(path).stem, lambda path=path: read_image(path)))
    if not items:
        raise CliError("nothing to segment: give image files or --sample NAME")
    return items


def _cmd_predict(args: argparse.Namespace) -> None:
    from PIL import Image
    from tqdm import tqdm

    from service.codecs import ImageDecodeError, ImageTooLargeError, blend_overlay, encode_mask_png
    from service.files import write_bytes_atomic
    from service.pipeline import ImageSegmenter

    model, meta = _load_model(args)
    if meta["config"].get("video"):
        raise CliError("this command segments images; the model is a video (CCNet3D) model")
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
            import io

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
        raise CliError(f"{failures} input(s) could not be segmented")


# --------------------------------------------------------------------------- convert


def _cmd_convert(args: argparse.Namespace) -> None:
    from model import convert_checkpoint

    classes = None
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        model, meta = convert_checkpoint(args.source, args.flavour, args.output, classes=classes)
    except (OSError, ValueError) as error:
        raise CliError(str(error)) from None
    config = meta["config"]
    print(
        f"wrote {args.output}: {config['name']} (ResNet-{config['depth']}, {config['flavour']}), "
        f"{len(meta['classes'])} classes, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters"
    )


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccnet",
        description="CCNet (criss-cross attention) semantic segmentation: models, "
        "prediction and checkpoint conversion.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list the named model configurations")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_cmd_models)

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

    convert = commands.add_parser(
        "convert",
        help="convert an official CCNet or mmsegmentation checkpoint",
        description="Build the matching architecture, map every tensor (strictly) and write a "
        "self-describing checkpoint of this project.",
    )
    convert.add_argument("source", metavar="SRC", help="the peer checkpoint (.pth)")
    convert.add_argument(
        "--from", dest="flavour", required=True, choices=("official", "mmseg"), help="its origin"
    )
    convert.add_argument("-o", "--output", required=True, metavar="DST", help="our checkpoint")
    convert.add_argument(
        "--classes", help="comma-separated class names (default: Cityscapes' for 19 classes)"
    )
    convert.set_defaults(handler=_cmd_convert)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except CliError as error:
        print(f"ccnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
