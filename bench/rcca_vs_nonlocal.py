"""Recurrent criss-cross attention (R = 2) vs a non-local block on the same feature map.

The CCNet paper compares its RCCA module with a non-local block on a 97×97 map and reports
about 11× less GPU memory and about 85% fewer FLOPs. This benchmark measures the same pair
here: FLOPs with ``torch.utils.flop_counter`` (matmuls and convolutions, which dominate both),
peak memory growth of forward and forward+backward, and wall time, at 97×97 with 512 channels.

The non-local block is the embedded-Gaussian form of Wang et al. (2018): theta, phi and g
project to C/2, a full (HW × HW) softmax attention, then a 1×1 projection back with batch norm
and a residual.

Usage:
    python -m bench.rcca_vs_nonlocal [--size 97] [--channels 512]
    python -m bench.rcca_vs_nonlocal --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bench._measure import (
    format_table,
    peak_memory_mib,
    pin_malloc_mmap_threshold,
    time_interleaved,
)
from ccnet.model.cca import CrissCrossAttention


class RecurrentCrissCross(nn.Module):
    """R passes of one criss-cross attention block (shared weights), as in the RCCA head."""

    def __init__(self, channels: int, recurrence: int = 2) -> None:
        super().__init__()
        self.cca = CrissCrossAttention(channels)
        self.recurrence = recurrence

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block: every position attends to every position."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = channels // 2
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.project = nn.Sequential(nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C/2)
        phi = self.phi(x).flatten(2)  # (B, C/2, HW)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, HW, C/2)
        attention = torch.softmax(theta @ phi, dim=-1)  # (B, HW, HW)
        y = (attention @ g).transpose(1, 2).reshape(B, -1, H, W)
        return x + self.project(y)


def _blocks(channels: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"RCCA (R=2)": RecurrentCrissCross(channels), "non-local": NonLocalBlock(channels)}


def _step(block: nn.Module, x: Tensor, backward: bool) -> Callable[[], None]:
    def run() -> None:
        if backward:
            block(x).sum().backward()
            block.zero_grad(set_to_none=True)
            x.grad = None
        else:
            with torch.no_grad():
                block(x)

    return run


def _input(size: int, channels: int, requires_grad: bool) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(1, channels, size, size, generator=gen).requires_grad_(requires_grad)


def count_gflops(block: nn.Module, x: Tensor, backward: bool) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        _step(block, x, backward)()
    return counter.get_total_flops() / 1e9


def measure_memory(size: int, channels: int) -> dict[str, dict[str, float | None]]:
    pin_malloc_mmap_threshold()
    out = {}
    for name, block in _blocks(channels).items():
        out[name] = {
            mode: peak_memory_mib(_step(block, _input(size, channels, backward), backward))
            for mode, backward in (("fwd", False), ("fwd+bwd", True))
        }
    return out


def run(size: int, channels: int, rounds: int) -> str:
    cmd = [sys.executable, "-m", "bench.rcca_vs_nonlocal", "--memory-worker", f"{size},{channels}"]
    memory = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    blocks = _blocks(channels)
    x, xg = _input(size, channels, False), _input(size, channels, True)
    fwd_ms = time_interleaved({n: _step(b, x, False) for n, b in blocks.items()}, rounds)
    fb_ms = time_interleaved(
        {n: _step(b, xg, True) for n, b in blocks.items()}, max(rounds // 2, 1)
    )
    numbers = {
        name: [
            count_gflops(block, x, False),
            count_gflops(block, xg, True),
            memory[name]["fwd"],
            memory[name]["fwd+bwd"],
            fwd_ms[name],
            fb_ms[name],
        ]
        for name, block in blocks.items()
    }
    rows = [[name, *(f"{value:.3g}" for value in values)] for name, values in numbers.items()]
    ratios = [
        n / r if r else float("nan")
        for n, r in zip(numbers["non-local"], numbers["RCCA (R=2)"], strict=True)
    ]
    rows.append(
        ["non-local / RCCA"]
        + [f"{r:.1f}× ({1 - 1 / r:.0%} fewer)" for r in ratios[:2]]
        + [f"{r:.1f}×" for r in ratios[2:]]
    )
    headers = [
        "block", "GFLOPs fwd", "GFLOPs fwd+bwd", "peak fwd MiB", "peak fwd+bwd MiB",
        "fwd ms", "fwd+bwd ms",
    ]  # fmt: skip
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=97, help="feature map height and width")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="a 17×17 map with 32 channels")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        size, channels = (int(s) for s in args.memory_worker.split(","))
        print(json.dumps(measure_memory(size, channels)))
        return
    if args.quick:
        args.size, args.channels, args.rounds = 17, 32, 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, "
          f"input (1, {args.channels}, {args.size}, {args.size})")  # fmt: skip
    print(run(args.size, args.channels, args.rounds))


if __name__ == "__main__":
    main()
