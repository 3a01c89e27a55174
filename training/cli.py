"""``ccnet train``, ``ccnet evaluate`` and ``ccnet synth``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``ccnet`` parser."""
    from training.config import add_config_arguments

    train = commands.add_parser(
        "train",
        help="train a model on a data set",
        description="Train CCNet / CCNet3D: SGD with poly LR, AMP, gradient accumulation, "
        "OHEM, auxiliary and category-consistent losses, DDP under torchrun, resumable "
        "checkpoints. Settings come from --config (YAML or JSON, same keys as the flags) and "
        "the flags, which win.",
    )
    train.add_argument("--config", metavar="FILE", help="YAML or JSON file with settings")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    add_config_arguments(train)
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a checkpoint on a data set (mIoU, per-class IoU, pixel accuracy)",
        description="Confusion-matrix mIoU of a checkpoint on a split. CCNet3D checkpoints "
        "score clips in windows covering every frame once; 2D checkpoints score clip data "
        "frame by frame.",
    )
    evaluate.add_argument("checkpoint", metavar="CKPT", help="a checkpoint of this project")
    evaluate.add_argument("--data", required=True, help="data set folder")
    evaluate.add_argument(
        "--layout",
        choices=("folder", "cityscapes", "camvid", "ade20k", "clips"),
        help="data layout (default: recognised from the folders)",
    )
    evaluate.add_argument("--split", default="val", help="split to score (default: val)")
    evaluate.add_argument(
        "--mode", choices=("whole", "slide", "multiscale"), default="whole", help="inference"
    )
    evaluate.add_argument("--tile", type=_positive_int, help="sliding-window size (slide)")
    evaluate.add_argument("--stride", type=_positive_int, help="sliding-window step")
    evaluate.add_argument(
        "--scales",
        type=_scales,
        default=(0.75, 1.0, 1.25, 1.5),
        help="comma-separated scales for multiscale (default: 0.75,1,1.25,1.5)",
    )
    evaluate.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=True, help="multiscale flip"
    )
    evaluate.add_argument("--clip-length", type=_positive_int, help="CCNet3D window length")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    evaluate.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_cmd_evaluate)

    synth = commands.add_parser(
        "synth",
        help="generate the synthetic scene (or clip) data set",
        description="Deterministic textured scenes in the plain-folder layout, or clips of "
        "moving objects with corrupted frames in the clip layout. Same seed, same files.",
    )
    synth.add_argument("out", metavar="OUT", help="destination folder (new or empty)")
    synth.add_argument("--kind", choices=("images", "clips"), default="images")
    synth.add_argument("--n", type=_positive_int, required=True, help="training samples")
    synth.add_argument("--val", type=int, help="validation samples (default: n // 8)")
    synth.add_argument("--seed", type=int, default=0, help="the data set's seed")
    synth.add_argument("--size", type=_positive_int, default=128, help="image side, pixels")
    synth.add_argument("--frames", type=_positive_int, default=8, help="frames per clip")
    synth.add_argument(
        "--overwrite", action="store_true", help="replace an earlier `ccnet synth` output in OUT"
    )
    synth.set_defaults(handler=_cmd_synth)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers like 0.75,1,1.25, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return values


# --------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> None:
    from training.config import load_config_file, resolve_config
    from training.loop import train

    flags = {
        k: v for k, v in vars(args).items() if k not in ("command", "handler", "config", "resume")
    }
    base: dict[str, Any] = {}
    if args.resume:
        out = flags.get("out") or (
            load_config_file(args.config).get("out") if args.config else None
        )
        if not out:
            raise ValueError("--resume needs --out (the run folder to continue)")
        saved = Path(out) / "config.json"
        if saved.is_file():
            base = json.loads(saved.read_text())
    config = resolve_config(flags, args.config, base=base)
    summary = train(config, resume=args.resume)
    if summary.get("world_size", 1) == 1 or _is_rank_zero():
        print(json.dumps(summary, indent=2))


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


# --------------------------------------------------------------------------- evaluate


def _cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from model import load_checkpoint
    from training import distributed
    from training.datasets import ClipDataset, check_split, load_split
    from training.evaluate import InferenceSettings, build_eval_dataset, evaluate_model

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = InferenceSettings(
        mode=args.mode, tile=args.tile, stride=args.stride, scales=args.scales, flip=args.flip
    )
    ctx = distributed.setup(args.device)
    try:
        model, meta = load_checkpoint(args.checkpoint)
        index = load_split(args.data, args.split, args.layout, progress=not args.json)
        check_split(index, progress=not args.json)
        classes = list(meta["classes"])
        if index.num_classes != len(classes):
            raise ValueError(
                f"{args.data}: the data set has {index.num_classes} classes, the checkpoint "
                f"{args.checkpoint} {len(classes)}"
            )
        model.to(ctx.device)
        dataset = build_eval_dataset(index, model, args.clip_length)
        matrix = evaluate_model(
            model,
            dataset,
            len(classes),
            settings,
            device=ctx.device,
            shard=(ctx.rank, ctx.world_size),
            workers=args.workers,
            progress=not args.json,
        )
        distributed.all_reduce_sum(matrix.matrix)
    finally:
        distributed.teardown()
    if not ctx.is_main:
        return
    config = meta["config"]
    result = {
        "checkpoint": str(args.checkpoint),
        "model": config["name"],
        "data": str(args.data),
        "layout": index.layout,
        "split": args.split,
        "mode": args.mode,
        "unit": "clip windows" if isinstance(dataset, ClipDataset) else "frames",
        "samples": len(dataset),  # type: ignore[arg-type]
        **matrix.summary(classes),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['model']} on {args.data} ({index.layout}, {args.split}, {args.mode}): "
        f"{result['samples']} {result['unit']}, {result['pixels']} pixels"
    )
    width = max(len(c) for c in classes)
    for name, iou in result["per_class_iou"].items():
        shown = "   n/a" if iou is None else f"{100 * iou:6.2f}"
        print(f"  {name:<{width}}  IoU {shown}")
    miou = result["mIoU"]
    print(f"  {'mIoU':<{width}}      {'n/a' if miou is None else f'{100 * miou:6.2f}'}")
    print(f"  {'pixel acc':<{width}}      {100 * (result['pixel_acc'] or 0):6.2f}")


# --------------------------------------------------------------------------- synth


def _cmd_synth(args: argparse.Namespace) -> None:
    from training.synth import generate

    counts = generate(
        args.out,
        args.kind,
        args.n,
        n_val=args.val,
        seed=args.seed,
        size=args.size,
        frames=args.frames,
        overwrite=args.overwrite,
        progress=True,
    )
    print(json.dumps({"out": str(args.out), "kind": args.kind, "seed": args.seed, **counts}))
