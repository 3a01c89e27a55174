"""Are a run's validation dips the BatchNorm running statistics, and would a precise-BN pass pay?

For every checkpoint a run kept (``--checkpoint-every``), the val mIoU twice: with the running
statistics training left in the network (what ``ccnet train`` validates and saves), and after
recomputing them as a plain average over ``--batches`` batches of the run's own training stream
(its augmentation, crop and batch size; a stream apart from the one the run trained on). A dip
that the second column fills is statistics lagging behind weights that moved; a checkpoint
whose second column is lower says the augmented crops describe the val images worse than the
running average does.

Usage:
    python -m bench.bn_recalibration RUN_DIR [--batches 50] [--threads 1] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bench._measure import format_table
from ccnet.model import CCNet, CCNet3D, load_checkpoint
from ccnet.training.config import resolve_config
from ccnet.training.datasets import SplitIndex, load_split
from ccnet.training.evaluate import build_eval_dataset, evaluate_model

# batches of the recalibration stream start here: far from any step a run trains on
_STREAM_OFFSET = 10_000_000


def _miou(model: CCNet, val: SplitIndex, clip_length: int | None) -> float:
    dataset = build_eval_dataset(val, model, clip_length)
    summary = evaluate_model(model, dataset, val.num_classes, progress=False).summary(val.classes)
    return 100.0 * float(summary["mIoU"] or 0.0)


def recalibrate(model: CCNet, batches: Any, count: int) -> None:
    """Replace every BatchNorm's running statistics by their average over ``count`` batches."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average, each batch weighted alike
    model.train()
    with torch.no_grad(), torch.random.fork_rng():
        for _, batch in zip(range(count), batches, strict=False):
            model(batch["image"])
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def measure(run: Path, count: int) -> list[dict[str, Any]]:
    config = resolve_config({}, base=json.loads((run / "config.json").read_text()))
    train = load_split(config.data, config.train_split, config.layout, progress=False)
    val = load_split(config.data, config.val_split, config.layout, progress=False)
    rows = []
    for folder in sorted((run / "checkpoints").glob("iter_*")):
        model, _ = load_checkpoint(folder / "model.pt")
        assert model.config is not None
        video = isinstance(model, CCNet3D)
        clip_length = (config.clip_length or model.config.clip_length) if video else None
        as_trained = _miou(model, val, clip_length)
        dataset = config.train_dataset(train, model.config.normalization, clip_length)
        sampler = config.batch_sampler(len(dataset), 0, 1, _STREAM_OFFSET)
        recalibrate(model, iter(DataLoader(dataset, batch_sampler=sampler)), count)
        recalibrated = _miou(model, val, clip_length)
        step = int(folder.name.removeprefix("iter_"))
        rows.append({"step": step, "as_trained": as_trained, "recalibrated": recalibrated})
        print(f"step {step}: {as_trained:.1f} -> {recalibrated:.1f}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a ccnet train run folder with checkpoints/")
    parser.add_argument("--batches", type=int, default=50, help="recalibration batches")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.run / "checkpoints").is_dir():
        print(f"{args.run}: no checkpoints/ folder (a ccnet train run?)", file=sys.stderr)
        return 2
    rows = measure(args.run, args.batches)
    headers = ["step", "val mIoU as trained", f"recalibrated ({args.batches} batches)", "change"]
    cells = [
        [str(step), f"{before:.1f}", f"{after:.1f}", f"{after - before:+.1f}"]
        for step, before, after in ((r["step"], r["as_trained"], r["recalibrated"]) for r in rows)
    ]
    print(format_table(headers, cells))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
