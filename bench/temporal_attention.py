"""What a CCNet3D does with time: how much its attention's time line carries, per pass.

For every pass of the RCCA head's shared 3D criss-cross block over the val windows of a
`ccnet synth --kind clips` split, this recomputes the block's attention from its own
projections (plain einsums, independent of the model's fast path, and checked against the
block's output) and reports, per group of query voxels:

* ``time mass``: the share of the joint softmax (time + column + row) on *other frames*;
* ``on corrupted``: the share on other frames that are corrupted (for a clean voxel, attention
  wasted on a bad neighbour; for a corrupted one, on another bad frame);
* ``time / x``: the size of the temporal part of the block's update, ``|γ·Σ_t' a·v|``, relative
  to the voxel's input feature ``|x|`` (the block adds ``γ·attention + x``): what time *adds*;
* ``γ``, the block's learnt residual scale (one number, shared by all passes).

Groups: clean frames in an all-clean window, clean frames with a corrupted frame in their
window, and corrupted frames by kind. Finally the function of it: mIoU per frame group with the
model's window against the same model on single frames (T = 1, where the 3D block is the 2D
one), so "what time is worth" is measured in the model's own output.

Usage:
    python -m bench.temporal_attention CKPT [CKPT ...] --data runs/clips-hb [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench._clip_set import add_clip_set_arguments, open_clip_set
from bench._measure import format_table
from ccnet.model import CCNet3D, load_checkpoint
from ccnet.training.datasets import ClipDataset
from ccnet.training.evaluate import build_eval_dataset
from ccnet.training.synth import CORRUPTION_GROUPS, CORRUPTIONS
from ccnet.training.temporal import score_clips

VOXEL_GROUPS: tuple[str, ...] = ("clean, clean window", "clean, corrupted neighbour", *CORRUPTIONS)


def attention_maps(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The block's joint attention on ``x`` (B, C, T, H, W), split by axis, and the value map.

    Returns ``(time, column, row, v)``: ``time`` (B, T, H, W, T) with self masked, ``column``
    (B, T, H, W, H) with self masked, ``row`` (B, T, H, W, W) holding self once, so the three
    sum to one per voxel; ``v`` the values (B, C, T, H, W).
    """
    q, k, v = block.query_conv(x), block.key_conv(x), block.value_conv(x)
    frames, height, width = x.shape[2:]
    e_time = torch.einsum("bcthw,bcshw->bthws", q, k)
    e_col = torch.einsum("bcthw,bctgw->bthwg", q, k)
    e_row = torch.einsum("bcthw,bcthg->bthwg", q, k)
    eye = [torch.eye(n, dtype=torch.bool, device=x.device) for n in (frames, height)]
    e_time = e_time.masked_fill(eye[0].view(frames, 1, 1, frames), float("-inf"))
    e_col = e_col.masked_fill(eye[1].view(1, height, 1, height), float("-inf"))
    joint = torch.softmax(torch.cat([e_time, e_col, e_row], dim=-1), dim=-1)
    time, col, row = joint.split([frames, height, width], dim=-1)
    return time, col, row, v


def _block_output(time: Tensor, col: Tensor, row: Tensor, v: Tensor) -> Tensor:
    """``attention · v`` summed over the three axes, (B, C, T, H, W)."""
    return (
        torch.einsum("bthws,bcshw->bcthw", time, v)
        + torch.einsum("bthwg,bctgw->bcthw", col, v)
        + torch.einsum("bthwg,bcthg->bcthw", row, v)
    )


class _Recorder:
    """Accumulates the per-group statistics of every pass of the head's attention block."""

    def __init__(self, block: nn.Module, passes: int) -> None:
        self.block = block
        self.passes = passes
        self.call = 0
        self.window_kinds: list[str] = []  # per frame of the current window: clean or a kind
        self.sums: dict[tuple[int, str], Tensor] = {}
        self.max_error = 0.0

    def hook(self, module: nn.Module, inputs: tuple[Tensor], output: Tensor) -> None:
        (x,) = inputs
        time, col, row, v = attention_maps(self.block, x)
        gamma = self.block.gamma
        expected = gamma * _block_output(time, col, row, v) + x
        scale = float(output.abs().max()) or 1.0
        self.max_error = max(self.max_error, float((expected - output).abs().max()) / scale)
        temporal = gamma * torch.einsum("bthws,bcshw->bcthw", time, v)
        ratio = temporal.norm(dim=1) / x.norm(dim=1).clamp_min(1e-6)  # (B, T, H, W)
        kinds = self.window_kinds
        bad = torch.tensor([k != "clean" for k in kinds], dtype=time.dtype)
        on_bad = (time * bad.view(1, 1, 1, 1, -1)).sum(-1)  # (B, T, H, W)
        mass = time.sum(-1)
        window_clean = all(k == "clean" for k in kinds)
        for t, kind in enumerate(kinds):
            if kind == "clean":
                group = VOXEL_GROUPS[0] if window_clean else VOXEL_GROUPS[1]
            else:
                group = kind
            values = torch.stack(
                [
                    mass[:, t].sum(),
                    on_bad[:, t].sum(),
                    ratio[:, t].sum(),
                    torch.tensor(1.0 * mass[:, t].numel()),
                ]
            )
            key = (self.call % self.passes, group)
            self.sums[key] = (
                self.sums.get(key, torch.zeros(4, dtype=torch.float64)) + values.double()
            )
        self.call += 1

    def table(self) -> dict[str, dict[str, dict[str, float]]]:
        out: dict[str, dict[str, dict[str, float]]] = {}
        for (r, group), s in sorted(self.sums.items()):
            n = float(s[3])
            out.setdefault(f"pass {r + 1}", {})[group] = {
                "time_mass": float(s[0]) / n,
                "on_corrupted": float(s[1]) / n,
                "time_over_x": float(s[2]) / n,
                "voxels": n,
            }
        return out


def diagnose(path: Path, index: Any, groups_of: Any, clip_length: int | None) -> dict[str, Any]:
    """Attention statistics and the window-vs-single-frame ablation of one checkpoint."""
    model, meta = load_checkpoint(path)
    if not isinstance(model, CCNet3D):
        raise ValueError(f"{path}: not a CCNet3D checkpoint ({meta['config']['name']})")
    model.eval()
    dataset = build_eval_dataset(index, model, clip_length)
    assert isinstance(dataset, ClipDataset)
    block = model.head.cca
    recorder = _Recorder(block, model.recurrence)
    handle = block.register_forward_hook(recorder.hook)
    try:
        with torch.no_grad():
            for i in range(len(dataset)):
                frames, _ = dataset.windows[i]
                recorder.window_kinds = [groups_of(f)[-1] for f in frames]
                x = dataset[i]["image"].unsqueeze(0)
                model(x)
    finally:
        handle.remove()
    window = score_clips(
        model, index, CORRUPTION_GROUPS, groups_of, clip_length=clip_length, progress=False
    )
    alone = score_clips(model, index, CORRUPTION_GROUPS, groups_of, clip_length=1, progress=False)
    return {
        "checkpoint": str(path),
        "gamma": float(block.gamma.detach().reshape(-1)[0]),
        "recurrence": model.recurrence,
        "clip_length": dataset.clip_length,
        "max_rel_error_vs_block": recorder.max_error,
        "attention": recorder.table(),
        "mIoU_window": window.summary()["mIoU"],
        "mIoU_single_frames": alone.summary()["mIoU"],
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _points(after: float | None, before: float | None) -> str:
    return "n/a" if after is None or before is None else f"{100 * (after - before):+.1f}"


def _print(result: dict[str, Any]) -> None:
    print(
        f"\n{result['checkpoint']}: gamma {result['gamma']:+.4f}, R = {result['recurrence']}, "
        f"window {result['clip_length']} "
        f"(block recomputed to {result['max_rel_error_vs_block']:.1e})"
    )
    rows = []
    for name, groups in result["attention"].items():
        for group in VOXEL_GROUPS:
            if group in groups:
                g = groups[group]
                rows.append(
                    [
                        name,
                        group,
                        f"{100 * g['time_mass']:.1f}",
                        f"{100 * g['on_corrupted']:.1f}",
                        f"{g['time_over_x']:.3f}",
                    ]
                )
    print(format_table(["pass", "query voxels", "time mass %", "on corrupted %", "time / x"], rows))
    window, alone = result["mIoU_window"], result["mIoU_single_frames"]
    rows = [
        ["window", *(_pct(window[g]) for g in CORRUPTION_GROUPS)],
        ["single frames (T=1)", *(_pct(alone[g]) for g in CORRUPTION_GROUPS)],
        ["time is worth", *(_points(window[g], alone[g]) for g in CORRUPTION_GROUPS)],
    ]
    print(format_table(["mIoU", *CORRUPTION_GROUPS], rows))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, metavar="CKPT")
    add_clip_set_arguments(parser)
    args = parser.parse_args(argv)
    for path in args.checkpoints:
        if not path.is_file():
            print(f"temporal_attention: {path}: no such checkpoint", file=sys.stderr)
            raise SystemExit(2)
    index, groups_of = open_clip_set(args)
    results = []
    for path in args.checkpoints:
        result = diagnose(path, index, groups_of, args.clip_length)
        _print(result)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
