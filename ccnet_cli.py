"""The ``ccnet`` command: one entry point that dispatches to the project's packages.

Conventions for every subcommand:

* A package contributes its subcommands through ``<package>/cli.py:register(commands)``, which
  adds argparse subparsers and sets ``handler=`` on each; ``build_parser`` gathers them here.
  Handlers import heavy modules lazily, so ``ccnet --help`` stays instant.
* Expected failures (missing file, corrupt checkpoint, unreadable image, bad value) are raised
  as ``ValueError`` or ``OSError`` whose message names the file and the problem. ``main``
  prints them as one line ``ccnet <command>: error: …`` and exits with status 2 (set
  ``CCNET_DEBUG=1`` for the traceback). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from export import cli as export_cli
from service import cli as service_cli
from training import cli as training_cli

__all__ = ["main"]

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


# --------------------------------------------------------------------------- convert


def _cmd_convert(args: argparse.Namespace) -> None:
    from model import convert_checkpoint

    classes = None
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    model, meta = convert_checkpoint(args.source, args.flavour, args.output, classes=classes)
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

    service_cli.register(commands)
    training_cli.register(commands)
    export_cli.register(commands)

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, OSError) as error:
        if os.environ.get("CCNET_DEBUG"):
            raise
        print(f"ccnet {args.command}: error: {_message(error)}", file=sys.stderr)
        return 2
    return 0


def _message(error: BaseException) -> str:
    """One line; an OSError without its own text gets its file name and reason."""
    if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error):
        return f"{error.filename}: {error.strerror or error}"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
