"""Make freed buffers go back to the system, so the memory budget describes the process.

glibc serves large allocations by mmap and returns them on free, but its threshold is
dynamic: after the first large block is freed it rises to up to 32 MiB, and later blocks come
from the heap, where freed memory stays in the process (per thread arena: the decode, encode
and inference threads each keep their own). A service whose requests allocate and free tens
of megabytes each then grows to the sum of every thread's worst moment, whatever the budget
admitted. Pinning the threshold keeps large buffers on mmap; small objects are unaffected.

``peak_growth_bytes`` measures what a call really adds to the resident set: the registry uses
it once per model, at warm-up, to learn the forward pass' activation memory per input pixel.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from pathlib import Path

__all__ = ["peak_growth_bytes", "pin_malloc_thresholds", "release_free_memory"]

log = logging.getLogger("ccnet.service.memory")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# 32 MiB, glibc's own ceiling for the dynamic threshold: decoded images, full-size logits and
# overlays (tens to hundreds of MiB) go to mmap and back to the system on free, while the
# forward pass' activations (mostly below it) are reused from the heap. A 1 MiB threshold put
# every activation on a fresh mmap: page faults made ccnet-tiny's forward 1.3-1.4x slower
# (85 -> 118 ms for 4×256², 311 -> 435 ms for 768×1024, one thread); at 32 MiB it runs as
# fast as with glibc's defaults (85-92 vs 86-89 ms, 281-320 vs 271-278 ms, same machine).
_MMAP_THRESHOLD = 32 << 20
# the heap's free top beyond this goes back to the system at once, so each thread's arena
# keeps at most a few MiB after its request
_TRIM_THRESHOLD = 8 << 20


def pin_malloc_thresholds(threshold: int = _MMAP_THRESHOLD, trim: int = _TRIM_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at ``threshold`` bytes and its trim threshold at ``trim``
    (False where there is no glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    pinned = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    libc.mallopt(_M_TRIM_THRESHOLD, trim)
    if not pinned:
        log.warning("could not pin malloc's mmap threshold; RSS may exceed the memory budget")
    return pinned


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def release_free_memory() -> bool:
    """Give every arena's free pages back to the system (glibc ``malloc_trim(0)``); False
    where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.malloc_trim(0))


def peak_growth_bytes(run: Callable[[], object], *, repeat: int = 2) -> int | None:
    """How far the process' resident set rose above its level while ``run()`` ran (VmHWM after
    a reset through /proc/self/clear_refs), the largest of ``repeat`` runs, or None where Linux
    does not tell.

    Each run starts from a trimmed heap (``release_free_memory``): without it a process that
    had already freed enough memory served the run from pages it still held, and the figure
    was whatever the process happened to do before (0 B/pixel for a model hot-reloaded into
    a warm server, 31-223 B/pixel for the same model on different starts). Freed pages given
    back must be faulted in again, so the growth is the run's own use however warm the
    process is; the largest of the runs is kept, so a budget built on it never undercounts.
    """
    growths = []
    for _ in range(max(1, repeat)):
        release_free_memory()
        growth = _one_peak_growth(run)
        if growth is None:
            return None
        growths.append(growth)
    return max(growths)


def _one_peak_growth(run: Callable[[], object]) -> int | None:
    before = _status_kib("VmRSS:")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return None
    run()
    peak = _status_kib("VmHWM:")
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024
