"""The precision decision, from measured figures: what is offered on this machine, which
path ``auto`` takes, and the autocast context of a torch precision. No measuring here.

A reduced-precision path (bf16 autocast on PyTorch, int8 on ONNX Runtime) is only worth
serving if it is faster *and* gives the same masks (``gate``). ``auto`` picks the fastest
offered path that passes by a margin (fp32 when none does); an explicitly requested path that
fails is still served, with a warning that gives the measured figures. A path the CPU cannot
run natively (see ``capabilities``) is not offered at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ccnet.inference.options import PRECISIONS, Precision
from ccnet.inference.precision.capabilities import CpuCapabilities, detect_cpu
from ccnet.inference.precision.gate import GateFigures

__all__ = [
    "PRECISIONS",
    "Precision",
    "PrecisionChoice",
    "autocast",
    "choose_precision",
    "offered_precisions",
]

# auto keeps fp32 unless a path is at least this much faster. Timings are the best of
# several interleaved rounds (``gate.measure_gate``), and on a shared machine even those move
# by several percent between starts: a 5 % bar let the same model run bf16 on one start and
# fp32 on the next. 10 % is a margin that noise does not cross, and a win below it is not
# worth a precision change anyway.
MIN_SPEEDUP = 1.10


def offered_precisions(backend: str, device: str, caps: CpuCapabilities | None = None) -> tuple:
    """The precisions ``backend`` can run fast on ``device`` ("cpu" or "cuda") here.

    fp32 always; on CUDA, fp16 with PyTorch (as before); on a CPU, bf16 with PyTorch where the
    CPU multiplies bf16 natively, and int8 with ONNX Runtime where it has VNNI. ONNX Runtime's
    CPU provider has no bf16 convolution kernels on x86 and PyTorch's int8 path measured slower
    than ONNX Runtime's (BENCHMARKS.md), so neither is offered.
    """
    if device.startswith("cuda"):
        return ("fp32", "fp16") if backend == "torch" else ("fp32",)
    caps = caps or detect_cpu()
    if backend == "torch" and caps.native_bf16:
        return ("fp32", "bf16")
    if backend == "onnxruntime" and caps.native_int8:
        return ("fp32", "int8")
    return ("fp32",)


@dataclass(frozen=True)
class PrecisionChoice:
    """What a model runs in, why, and the figures behind it."""

    requested: str
    precision: str
    offered: tuple[str, ...]
    reason: str
    figures: dict[str, GateFigures] = field(default_factory=dict)
    warning: str | None = None

    @property
    def speedup(self) -> float:
        """Measured speed-up of the chosen path over fp32 (1.0 for fp32 or unmeasured)."""
        chosen = self.figures.get(self.precision)
        return chosen.speedup if chosen is not None else 1.0

    def describe(self) -> dict[str, object]:
        """The /v1/models ``precision`` entry."""
        return {
            "requested": self.requested,
            "chosen": self.precision,
            "offered": list(self.offered),
            "speedup": round(self.speedup, 3),
            "reason": self.reason,
            "gate": {name: figures.describe() for name, figures in self.figures.items()},
            "cpu": detect_cpu().describe(),
        }


def choose_precision(
    requested: str, offered: Sequence[str], figures: Mapping[str, GateFigures]
) -> PrecisionChoice:
    """The decision alone, from measured figures (no measuring here: tests drive it).

    ``auto``: the offered, gate-passing path with the largest speed-up, if it beats fp32 by
    10 %; else fp32. An explicit offered path is honoured, with a warning when it fails the
    gate. A path not offered here falls back to fp32 with a warning (a config written for an
    AMX machine still starts on an older one).
    """
    offered = tuple(offered)
    figures = dict(figures)
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto" and "fp16" in offered:
        # CUDA: half precision as the service always served it there (no CPU gate applies)
        return PrecisionChoice(requested, "fp16", offered, "fp16 on CUDA", figures)
    if requested == "auto":
        passing = [f for name, f in figures.items() if name in offered and f.passed]
        best = max(passing, key=lambda f: f.speedup, default=None)
        if best is not None and best.speedup >= MIN_SPEEDUP:
            return PrecisionChoice(
                requested, best.precision, offered, "fastest path passing the gate", figures
            )
        failing = [f.summary() for f in figures.values() if not f.passed]
        why = (
            f"no path that passes the gate is {MIN_SPEEDUP:.2f}x fp32 or faster"
            if figures
            else "no reduced precision is offered on this machine"
        )
        if failing:
            why += " (failed: " + "; ".join(failing) + ")"
        return PrecisionChoice(requested, "fp32", offered, why, figures)
    if requested not in offered:
        warning = (
            f"precision {requested} is not offered here (offered: {', '.join(offered)}; "
            f"CPU {detect_cpu().model!r} has {', '.join(detect_cpu().flags) or 'no'} "
            "bf16/int8 features); serving fp32"
        )
        return PrecisionChoice(requested, "fp32", offered, "not offered", figures, warning)
    chosen = figures.get(requested)
    warning = None
    if chosen is not None and not chosen.passed:
        warning = (
            f"precision {requested} was asked for but fails the parity gate: "
            + "; ".join(chosen.failures())
            + f" ({chosen.summary()})"
        )
    return PrecisionChoice(requested, requested, offered, "asked for", figures, warning)


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager[object]:
    """The autocast context of a torch precision (bf16 on CPU, fp16 on CUDA; fp32: none)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type, dtype=torch.float16)
    return contextlib.nullcontext()
