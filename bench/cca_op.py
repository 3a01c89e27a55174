"""Criss-cross attention op: our implementations vs the common einsum formulation.

The baseline is the formulation most public code uses (mmcv's CrissCrossAttention): two
einsums for the column and row energies, an additive -inf diagonal, one softmax over the
concatenation, two einsums for the output. It is written here, in the benchmark, so the
comparison does not depend on mmcv being installed.

Usage:
    python -m bench.cca_op                  # the shapes of the issue, 2D and 3D
    python -m bench.cca_op --quick          # tiny shapes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from bench._measure import (
    format_table,
    peak_memory_mib,
    pin_malloc_mmap_threshold,
    time_interleaved,
)
from ccnet.model.cca import criss_cross_attention
from ccnet.model.cca3d import criss_cross_attention_3d
from ccnet.model.config import cca_implementation

Shape = tuple[int, ...]  # (B, Cq, C, *spatial)

SHAPES: list[Shape] = [(1, 64, 512, 97, 97), (2, 32, 256, 65, 129), (1, 32, 256, 8, 49, 49)]
QUICK_SHAPES: list[Shape] = [(1, 8, 16, 9, 11), (1, 8, 16, 3, 7, 5)]


def einsum_cca(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Baseline 2D: mmcv-style einsums, concat, one softmax."""
    H = q.shape[2]
    energy_h = torch.einsum("bchw,bciw->bhwi", q, k)
    index = torch.arange(H, device=q.device)
    diagonal = index.view(1, H, 1, 1) == index.view(1, 1, 1, H)
    energy_h = energy_h.masked_fill(diagonal, float("-inf"))
    energy_w = torch.einsum("bchw,bchj->bhwj", q, k)
    attention = torch.softmax(torch.cat([energy_h, energy_w], dim=-1), dim=-1)
    out = torch.einsum("bciw,bhwi->bchw", v, attention[..., :H])
    return out + torch.einsum("bchj,bhwj->bchw", v, attention[..., H:])


def einsum_cca_3d(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Baseline 3D: the same formulation extended to a time axis."""
    T, H = q.shape[2], q.shape[3]
    energy_t = torch.einsum("bcthw,bcshw->bthws", q, k)
    energy_t = energy_t.masked_fill(
        torch.eye(T, dtype=torch.bool, device=q.device).view(1, T, 1, 1, T), float("-inf")
    )
    energy_h = torch.einsum("bcthw,bctiw->bthwi", q, k)
    energy_h = energy_h.masked_fill(
        torch.eye(H, dtype=torch.bool, device=q.device).view(1, 1, H, 1, H), float("-inf")
    )
    energy_w = torch.einsum("bcthw,bcthj->bthwj", q, k)
    attention = torch.softmax(torch.cat([energy_t, energy_h, energy_w], dim=-1), dim=-1)
    out = torch.einsum("bcshw,bthws->bcthw", v, attention[..., :T])
    out = out + torch.einsum("bctiw,bthwi->bcthw", v, attention[..., T : T + H])
    return out + torch.einsum("bcthj,bthwj->bcthw", v, attention[..., T + H :])


def _ours(impl: str, three_d: bool) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    op = criss_cross_attention_3d if three_d else criss_cross_attention

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        with cca_implementation(impl):
            return op(q, k, v)

    return run


def candidates(three_d: bool) -> dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]]:
    return {
        "einsum (baseline)": einsum_cca_3d if three_d else einsum_cca,
        "reference": _ours("reference", three_d),
        "fast": _ours("fast", three_d),
    }


def _inputs(shape: Shape, requires_grad: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    B, Cq, C, *spatial = shape
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, Cq, *spatial, generator=gen) for _ in range(2))
    v = torch.randn(B, C, *spatial, generator=gen)
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))  # type: ignore[return-value]


def _forward(fn, shape: Shape) -> Callable[[], object]:
    q, k, v = _inputs(shape)

    def run() -> None:
        with torch.no_grad():
            fn(q, k, v)

    return run


def _forward_backward(fn, shape: Shape) -> Callable[[], object]:
    q, k, v = _inputs(shape, requires_grad=True)

    def run() -> None:
        out = fn(q, k, v)
        out.backward(torch.ones_like(out))
        for t in (q, k, v):
            t.grad = None

    return run


def measure_memory(shapes: list[Shape]) -> dict[str, dict[str, float | None]]:
    """Peak resident growth per (shape, candidate, mode); run in a fresh process."""
    pin_malloc_mmap_threshold()
    results: dict[str, dict[str, float | None]] = {}
    for shape in shapes:
        for name, fn in candidates(len(shape) == 6).items():
            results[f"{shape}|{name}"] = {
                "fwd": peak_memory_mib(_forward(fn, shape)),
                "fwd+bwd": peak_memory_mib(_forward_backward(fn, shape)),
            }
    return results


def _memory_in_subprocess(shapes: list[Shape]) -> dict[str, dict[str, float | None]]:
    cmd = [sys.executable, "-m", "bench.cca_op", "--memory-worker", json.dumps(shapes)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(done.stdout)


def _ratio(value: float | None, baseline: float | None, lower_is_better: bool = True) -> str:
    if value is None or baseline is None or value == 0:
        return "n/a"
    return f"{baseline / value:.2f}×" if lower_is_better else f"{value / baseline:.2f}×"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def run(shapes: list[Shape], rounds: int) -> str:
    memory = _memory_in_subprocess(shapes)
    headers = [
        "shape (B,Cq,C,spatial)", "implementation", "fwd ms", "fwd speed-up",
        "fwd+bwd ms", "fwd+bwd speed-up", "peak fwd MiB", "peak fwd+bwd MiB",
    ]  # fmt: skip
    rows = []
    for shape in shapes:
        cands = candidates(len(shape) == 6)
        fwd = time_interleaved({n: _forward(f, shape) for n, f in cands.items()}, rounds)
        fb = time_interleaved(
            {n: _forward_backward(f, shape) for n, f in cands.items()}, max(rounds // 3, 1)
        )
        base = "einsum (baseline)"
        for name in cands:
            mem = memory[f"{shape}|{name}"]
            rows.append([
                str(shape), name,
                f"{fwd[name]:.1f}", _ratio(fwd[name], fwd[base]),
                f"{fb[name]:.1f}", _ratio(fb[name], fb[base]),
                _mib(mem["fwd"]), _mib(mem["fwd+bwd"]),
            ])  # fmt: skip
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few rounds (smoke run)")
    parser.add_argument("--rounds", type=int, default=15, help="timing rounds per candidate")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        shapes = [tuple(s) for s in json.loads(args.memory_worker)]
        print(json.dumps(measure_memory(shapes)))
        return
    shapes = QUICK_SHAPES if args.quick else SHAPES
    rounds = 3 if args.quick else args.rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU")
    print(run(shapes, rounds))


if __name__ == "__main__":
    main()
