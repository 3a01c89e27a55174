"""Timing and peak-memory helpers shared by the benchmarks.

Timing interleaves the candidates round by round, so a slow spell of a shared 2-core machine
hits every candidate alike, and reports medians.

Peak memory is the growth of the process' resident set while a call runs (Linux: reset the
high-water mark through /proc/self/clear_refs, read VmHWM). It counts every allocation,
including the copies hidden inside composite ops. For it to be exact, glibc must hand large
blocks back to the system when they are freed, so the measuring process first pins malloc's
mmap threshold (``pin_malloc_mmap_threshold``); that makes allocation slower, so memory is
measured in a separate process from timing.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

__all__ = [
    "format_table",
    "peak_memory_mib",
    "pin_malloc_mmap_threshold",
    "time_interleaved",
]

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def pin_malloc_mmap_threshold(threshold: int = 1 << 16) -> bool:
    """Serve every block above ``threshold`` bytes by mmap so a free returns it at once."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_memory_mib(fn: Callable[[], object], warmup: int = 1) -> float | None:
    """Peak growth of resident memory (MiB) during ``fn()``; None where Linux /proc is absent."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        return None
    for _ in range(warmup):
        fn()
    gc.collect()
    clear_refs.write_text("5")  # reset VmHWM to the current resident set
    base = _status_bytes("VmRSS:")
    fn()
    return (_status_bytes("VmHWM:") - base) / 2**20


def time_interleaved(
    candidates: Mapping[str, Callable[[], object]], rounds: int = 15, warmup: int = 2
) -> dict[str, float]:
    """Median wall time (ms) of each candidate, measured round-robin."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain Markdown table (readable in a terminal, pastes into BENCHMARKS.md)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])
