"""CCNet3D vs the 2D model it was initialised from, per frame kind and seed: does time pay?

For each seed, a pair of checkpoints (the 2D model of the recipe's first stage, the CCNet3D of
its second) is scored on the same clip split: mIoU on all, clean and corrupted frames and per
corruption kind (2D frame by frame, 3D in windows covering each frame once), the gain, and the
temporal stability figure (label flicker: pixels whose label changes between consecutive
frames where the truth does not; lower is better). A kind the 3D model's training clips did not
contain (``ccnet synth --hold-out``, recorded in its provenance) is marked "held out": there a
gain can only come from reading the neighbouring frames. Then mean ± s.d. over the seeds.

Usage:
    python -m bench.temporal_gain --data runs/clips-hb \
        --pair runs/2d-s0/best.pt,runs/3d-s0/best.pt --pair ... [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench._clip_set import add_clip_set_arguments, open_clip_set
from bench._measure import format_table
from ccnet.model import load_checkpoint
from ccnet.training.synth import CORRUPTION_GROUPS, CORRUPTIONS
from ccnet.training.temporal import FLICKER_GROUPS, score_clips


def _held_out(meta: dict[str, Any]) -> list[str]:
    generator = meta.get("provenance", {}).get("data_generator") or {}
    return list(generator.get("held_out", []))


def _score(path: Path, index: Any, groups_of: Any, clip_length: int | None) -> dict[str, Any]:
    model, meta = load_checkpoint(path)
    scores = score_clips(model, index, CORRUPTION_GROUPS, groups_of, clip_length=clip_length)
    return {"checkpoint": str(path), "held_out": _held_out(meta), **scores.summary()}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _gain(after: float | None, before: float | None) -> float | None:
    """Points of mIoU (or of flicker) gained; None where a group has no frames."""
    return None if after is None or before is None else 100 * (after - before)


def _signed(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _mean_sd(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    if len(known) < 2:
        return f"{known[0]:.1f}"
    return f"{statistics.mean(known):.1f} ± {statistics.stdev(known):.1f}"


def _scaled(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _tables(results: list[dict[str, Any]]) -> str:
    held = sorted({k for r in results for k in r["3d"]["held_out"]})
    names = [f"{g} (held out)" if g in held else g for g in CORRUPTION_GROUPS]
    rows = []
    for r in results:
        for model in ("2d", "3d"):
            row = [r["seed"], model.upper()]
            row += [_pct(r[model]["mIoU"][g]) for g in CORRUPTION_GROUPS]
            row += [_pct(r[model]["flicker"]["all"])]
            rows.append(row)
        gains = [_gain(r["3d"]["mIoU"][g], r["2d"]["mIoU"][g]) for g in CORRUPTION_GROUPS]
        flicker = _gain(r["3d"]["flicker"]["all"], r["2d"]["flicker"]["all"])
        rows.append([r["seed"], "gain", *(_signed(g) for g in gains), _signed(flicker)])
    per_seed = format_table(["seed", "model", *names, "flicker %"], rows)
    summary_rows = []
    for label, pick in (
        ("2D", lambda r, g: _scaled(r["2d"]["mIoU"][g])),
        ("3D", lambda r, g: _scaled(r["3d"]["mIoU"][g])),
        ("gain", lambda r, g: _gain(r["3d"]["mIoU"][g], r["2d"]["mIoU"][g])),
    ):
        cells = [_mean_sd([pick(r, g) for r in results]) for g in CORRUPTION_GROUPS]
        summary_rows.append([label, *cells])
    # flicker by frame pair: the first three columns (all, clean, corrupted) name the pairs
    for label, key in (("flicker 2D %", "2d"), ("flicker 3D %", "3d")):
        cells = [_mean_sd([_scaled(r[key]["flicker"][p]) for r in results]) for p in FLICKER_GROUPS]
        summary_rows.append([label, *cells, *[""] * (len(names) - len(cells))])
    summary = format_table([f"mean ± s.d. ({len(results)} seeds)", *names], summary_rows)
    note = (
        "flicker rows: columns all / clean / corrupted are frame *pairs* (all consecutive "
        "pairs, two clean frames, at least one corrupted)"
    )
    return f"{per_seed}\n\n{summary}\n{note}"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clip_set_arguments(parser)
    parser.add_argument(
        "--pair",
        action="append",
        required=True,
        metavar="2D,3D",
        help="the 2D checkpoint and the CCNet3D initialised from it (one per seed)",
    )
    parser.add_argument("--seeds", help="comma-separated seed labels (default: 0, 1, ...)")
    args = parser.parse_args(argv)
    labels = args.seeds.split(",") if args.seeds else [str(i) for i in range(len(args.pair))]
    if len(labels) != len(args.pair):
        parser.error(f"--seeds names {len(labels)} seeds for {len(args.pair)} pairs")
    pairs = []
    for pair in args.pair:
        paths = [Path(p) for p in pair.split(",")]
        missing = [str(p) for p in paths if not p.is_file()]
        if len(paths) != 2 or missing:
            print(f"temporal_gain: --pair {pair}: need two existing checkpoints", file=sys.stderr)
            raise SystemExit(2)
        pairs.append(paths)
    index, groups_of = open_clip_set(args)
    results = []
    for label, (two_d, three_d) in zip(labels, pairs, strict=True):
        print(f"seed {label}: scoring {two_d} and {three_d}", file=sys.stderr, flush=True)
        results.append(
            {
                "seed": label,
                "2d": _score(two_d, index, groups_of, None),
                "3d": _score(three_d, index, groups_of, args.clip_length),
            }
        )
    print(f"{args.data} ({args.split}): {index.num_classes} classes, kinds {CORRUPTIONS}")
    print(_tables(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
