"""``ccnet train``, ``ccnet evaluate`` and ``ccnet synth``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``ccnet`` parser."""
    from ccnet.training.config import add_config_arguments

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
    train.add_argument(
        "--export",
        choices=("onnx",),
        help="after the run, export best.pt (final.pt without validation) to RUN_DIR/model.onnx "
        "+ model.json, checked against PyTorch (as `ccnet export onnx`)",
    )
    add_config_arguments(train)
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a checkpoint on a data set (mIoU, per-class IoU, pixel accuracy)",
        description="Confusion-matrix mIoU of a checkpoint on a split. CCNet3D checkpoints "
        "score clips in windows covering every frame once; 2D checkpoints score clip data "
        "frame by frame. --report DIR writes the confusion matrix and per-class IoU as PNG "
        "charts with a JSON; --corruptions breaks a `ccnet synth --kind clips` split down by "
        "how each frame was corrupted. On clip data the label flicker between consecutive "
        "frames (where the truth holds) is reported too.",
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
    evaluate.add_argument(
        "--tile",
        type=_positive_int,
        help="sliding-window size (default for slide: the checkpoint's training crop)",
    )
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
    evaluate.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="fp32",
        help="fp32 (default); bf16 (CPU) or fp16 (CUDA) autocast; auto: what the service's "
        "parity gate picks for this checkpoint here (inference/precision/)",
    )
    evaluate.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--report",
        metavar="DIR",
        help="write DIR/report.json, DIR/confusion.png and DIR/iou.png",
    )
    evaluate.add_argument(
        "--corruptions",
        action="store_true",
        help="also score clean and corrupted frames apart (clips written by `ccnet synth`)",
    )
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
        "--hold-out",
        default="",
        metavar="KINDS",
        help="comma-separated corruption kinds (occlusion, noise, blur) left out of the train "
        "clips; val keeps them all, to test that CCNet3D borrows from neighbouring frames",
    )
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
    from ccnet.training.config import load_config_file, resolve_config
    from ccnet.training.interrupt import Interrupted
    from ccnet.training.loop import train

    cli_only = ("command", "handler", "config", "resume", "export")
    flags = {k: v for k, v in vars(args).items() if k not in cli_only}
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
    try:
        summary = train(config, resume=args.resume)
    except Interrupted as stopped:
        if _is_rank_zero():
            print(f"ccnet train: {stopped}", file=sys.stderr)
        raise SystemExit(stopped.exit_status) from None
    except KeyboardInterrupt:  # Ctrl-C during setup, or a second one during a step
        if _is_rank_zero():
            print(
                "ccnet train: interrupted; --resume continues from the last committed checkpoint",
                file=sys.stderr,
            )
        raise SystemExit(130) from None
    rank_zero = summary.get("world_size", 1) == 1 or _is_rank_zero()
    if args.export and rank_zero and summary.get("iterations") == config.iterations:
        summary["export"] = _export_run(Path(config.out))
    if rank_zero:
        print(json.dumps(summary, indent=2))


def _export_run(run_dir: Path) -> dict[str, Any]:
    """The finished run's best model as a parity-checked ONNX file beside its checkpoints."""
    from ccnet.export.onnx import export_onnx

    checkpoint = run_dir / "best.pt"
    if not checkpoint.is_file():
        checkpoint = run_dir / "final.pt"
    result = export_onnx(checkpoint, run_dir)
    return {
        "checkpoint": str(checkpoint),
        "onnx": str(result.model_path),
        "sidecar": str(result.sidecar_path),
    }


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


# --------------------------------------------------------------------------- evaluate


def _evaluation_precision(args: argparse.Namespace, model: Any, meta: Any, device: Any) -> str:
    """``--precision`` resolved for this checkpoint and machine (auto: the service's gate)."""
    from ccnet.inference.options import LoadOptions
    from ccnet.inference.precision.select import resolve_checkpoint_precision

    # the command is an entry point: the gate's cache is where the service keeps it
    cache_dir = Path(os.environ.get("CCNET_CACHE_DIR") or LoadOptions().cache_dir).expanduser()
    return resolve_checkpoint_precision(
        args.precision, Path(args.checkpoint), model, meta, str(device), cache_dir
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from ccnet.inference.precision.policy import autocast
    from ccnet.model import load_checkpoint
    from ccnet.training import distributed
    from ccnet.training.datasets import ClipDataset, check_split, load_split
    from ccnet.training.evaluate import build_eval_dataset, evaluate_groups
    from ccnet.training.metrics import SCORES_ARE

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = distributed.setup(args.device)
    try:
        model, meta = load_checkpoint(args.checkpoint)
        settings = _inference_settings(args, meta)
        index = load_split(args.data, args.split, args.layout, progress=not args.json)
        check_split(index, progress=not args.json)
        classes = list(meta["classes"])
        if index.num_classes != len(classes):
            raise ValueError(
                f"{args.data}: the data set has {index.num_classes} classes, the checkpoint "
                f"{args.checkpoint} {len(classes)}"
            )
        groups, groups_of = _groups(index, args.corruptions)
        flicker = _flicker_counter(index, groups_of if args.corruptions else None, ctx.world_size)
        model.to(ctx.device)
        precision = _evaluation_precision(args, model, meta, ctx.device)
        dataset = build_eval_dataset(index, model, args.clip_length)
        with autocast(precision, ctx.device.type):
            matrices, counts = evaluate_groups(
                model,
                dataset,
                len(classes),
                groups,
                groups_of,
                settings,
                device=ctx.device,
                shard=(ctx.rank, ctx.world_size),
                workers=args.workers,
                progress=not args.json,
                on_frame=flicker.add if flicker is not None else None,
            )
        for group in groups:  # the same order on every process
            distributed.all_reduce_sum(matrices[group].matrix)
        frames = distributed.all_reduce_sum(torch.tensor([counts[g] for g in groups]))
    finally:
        distributed.teardown()
    if not ctx.is_main:
        return
    matrix = matrices["all"]
    if isinstance(dataset, ClipDataset):
        unit = "clip windows"
    else:
        unit = "frames" if index.clips is not None else "images"
    result = {
        "checkpoint": str(args.checkpoint),
        "model": meta["config"]["name"],
        "data": str(args.data),
        "layout": index.layout,
        "split": args.split,
        "mode": settings.mode,
        "tile": settings.tile,
        "precision": precision,
        "unit": unit,
        "samples": len(dataset),  # type: ignore[arg-type]
        "scores_are": SCORES_ARE,
        **matrix.summary(classes),
    }
    if args.corruptions:
        result["corruptions"] = {
            "mIoU": {g: matrices[g].summary()["mIoU"] for g in groups},
            "frames": dict(zip(groups, (int(n) for n in frames), strict=True)),
        }
    if flicker is not None:
        result["temporal"] = flicker.summary()
    if args.report:
        from ccnet.training.report import write_report

        result["report"] = write_report(args.report, result, matrix.matrix.numpy(), classes)
    if args.json:
        print(json.dumps(result))
        return
    _print_result(result, classes)


def _inference_settings(args: argparse.Namespace, meta: dict[str, Any]) -> Any:
    """The flags as ``InferenceSettings``; slide without --tile takes the training crop."""
    from ccnet.training.evaluate import InferenceSettings, default_tile

    tile = args.tile
    if tile is None and args.mode == "slide":
        tile = default_tile(meta)
        if tile is None:
            raise ValueError(
                f"{args.checkpoint}: records no training crop; pass --tile for --mode slide"
            )
    return InferenceSettings(
        mode=args.mode, tile=tile, stride=args.stride, scales=args.scales, flip=args.flip
    )


def _flicker_counter(index: Any, groups_of: Any, world_size: int) -> Any:
    """Label flicker for a clip split (by corruption group when given the ``--corruptions``
    groups); None for images, and under several processes, whose shards split the clips'
    frame pairs."""
    if index.clips is None or world_size > 1:
        return None
    from ccnet.training.temporal import ClipFlicker

    return ClipFlicker(index.clips, groups_of)


def _groups(index: Any, corruptions: bool) -> tuple[tuple[str, ...], Any]:
    """The groups frames are scored in: ``all``, and with ``--corruptions`` the synth ones."""
    if not corruptions:
        return ("all",), lambda frame: ("all",)
    from ccnet.training.synth import CORRUPTION_GROUPS, corruption_groups

    return CORRUPTION_GROUPS, corruption_groups(index)


def _print_result(result: dict[str, Any], classes: list[str]) -> None:
    print(
        f"{result['model']} on {result['data']} ({result['layout']}, {result['split']}, "
        f"{result['mode']}): {result['samples']} {result['unit']}, {result['pixels']} pixels"
    )
    width = max(len(c) for c in [*classes, "corrupted"])
    for name, iou in result["per_class_iou"].items():
        shown = "   n/a" if iou is None else f"{100 * iou:6.2f}"
        print(f"  {name:<{width}}  IoU {shown}")
    miou = result["mIoU"]
    print(f"  {'mIoU':<{width}}      {'n/a' if miou is None else f'{100 * miou:6.2f}'}")
    print(f"  {'pixel acc':<{width}}      {100 * (result['pixel_acc'] or 0):6.2f}")
    if "corruptions" in result:
        print("  by frame corruption:")
        for group, value in result["corruptions"]["mIoU"].items():
            shown = "   n/a" if value is None else f"{100 * value:6.2f}"
            frames = result["corruptions"]["frames"][group]
            print(f"  {group:<{width}}  mIoU {shown}  ({frames} frames)")
    if "temporal" in result:
        print("  label flicker by frame pair (label changes where the truth does not):")
        for pairs, rate in result["temporal"]["flicker"].items():
            shown = "   n/a" if rate is None else f"{100 * rate:6.2f} %"
            print(f"  {pairs:<{width}}  flicker {shown}")
    if "report" in result:
        print(f"  report: {', '.join(result['report'].values())}")


# --------------------------------------------------------------------------- synth


def _cmd_synth(args: argparse.Namespace) -> None:
    from ccnet.training.synth import generate

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
        hold_out=tuple(k for k in args.hold_out.split(",") if k),
    )
    print(json.dumps({"out": str(args.out), "kind": args.kind, "seed": args.seed, **counts}))
