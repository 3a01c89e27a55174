"""Which numeric precision a model runs in on this machine, decided by a parity gate.

A reduced-precision path (bf16 autocast on PyTorch, int8 on ONNX Runtime) is only worth
serving if it is faster *and* gives the same masks. The gate measures both on this machine,
once per model file and machine (the figures are cached in ``CCNET_CACHE_DIR``):

* argmax agreement with fp32 on real photographs (scikit-image's samples) and on the model's
  validation data, each >= 99.5 % of the pixels;
* mIoU within 0.5 points of fp32's on that validation data, when the checkpoint records the
  ``ccnet synth`` generator it was trained on (the demo models do): the validation scenes are
  rendered again from the generator's seed, so no data set needs to be on disk;
* the speed-up over fp32 on the photographs, timed interleaved with fp32 in one process.

``auto`` picks the fastest offered path that passes (fp32 when none is faster); an explicitly
requested path that fails is still served, with a warning that gives the measured figures.
A path the CPU cannot run natively (see ``capabilities``) is not offered at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .capabilities import CpuCapabilities, detect_cpu
from .gate import (
    GATE_MAX_MIOU_DROP,
    GATE_MIN_AGREEMENT,
    GateData,
    GateFigures,
    Runner,
    gate_data,
    measure_gate,
)

if TYPE_CHECKING:
    from .base import InferenceBackend

__all__ = [
    "GATE_MAX_MIOU_DROP",
    "GATE_MIN_AGREEMENT",
    "PRECISIONS",
    "GateData",
    "GateFigures",
    "Precision",
    "PrecisionChoice",
    "apply_precision",
    "autocast",
    "choose_precision",
    "configure_backend",
    "file_key",
    "gate_data",
    "measure_gate",
    "offered_precisions",
    "precision_entry",
    "record_precision_metrics",
    "resolve_checkpoint_precision",
    "select_precision",
    "training_generator",
]

Precision = Literal["auto", "fp32", "bf16", "int8", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "int8", "fp16")
# auto keeps fp32 unless a path is at least this much faster: a 2 % "win" is timing noise
_MIN_SPEEDUP = 1.05
_GATE_VERSION = 2  # bump when the gate's data or criteria change: old cached figures go

log = logging.getLogger("ccnet.service.models")


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


# ---------------------------------------------------------------------------------- choice


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
    5 %; else fp32. An explicit offered path is honoured, with a warning when it fails the
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
        if best is not None and best.speedup >= _MIN_SPEEDUP:
            return PrecisionChoice(
                requested, best.precision, offered, "fastest path passing the gate", figures
            )
        failing = [f.summary() for f in figures.values() if not f.passed]
        why = (
            f"no path that passes the gate is {_MIN_SPEEDUP:.2f}x fp32 or faster"
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


class GateCache:
    """Measured figures in ``DIR/precision/<key>.json``, keyed by model file, backend,
    CPU and runtime versions, so a restart does not measure again."""

    def __init__(self, cache_dir: Path, key: str) -> None:
        self.path = cache_dir / "precision" / f"{key}-g{_GATE_VERSION}.json"

    def load(self) -> dict[str, GateFigures]:
        try:
            stored = json.loads(self.path.read_text())
            return {name: GateFigures(**values) for name, values in stored["figures"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def store(self, figures: Mapping[str, GateFigures], data: str) -> None:
        from model.files import write_json_atomic

        try:
            write_json_atomic(
                self.path,
                {
                    "gate_version": _GATE_VERSION,
                    "cpu": detect_cpu().describe(),
                    "data": data,
                    "figures": {name: asdict(f) for name, f in figures.items()},
                },
            )
        except OSError as error:  # a read-only cache costs a re-measure next time, no more
            log.warning("cannot cache the precision gate in %s: %s", self.path, error)


def _ungated(requested: str, offered: Sequence[str], why: str) -> PrecisionChoice:
    """Without the gate's data ``auto`` stays fp32; an explicit offered path is served."""
    if requested in offered and requested != "auto":
        choice = PrecisionChoice(requested, requested, tuple(offered), "asked for", {}, why)
    else:
        choice = PrecisionChoice(requested, "fp32", tuple(offered), why, {})
    log.warning("%s", why)
    return choice


def select_precision(
    requested: str,
    offered: Sequence[str],
    *,
    runners: Callable[[Sequence[str]], tuple[Runner, dict[str, Runner]]],
    data: Callable[[], GateData],
    cache: GateCache | None,
    name: str,
) -> PrecisionChoice:
    """Measure (or read from ``cache``) what ``requested`` needs, then ``choose_precision``.

    Args:
        requested: the setting.
        offered: ``offered_precisions`` for this backend and device.
        runners: for the paths to measure, (fp32 runner, {path: runner}); called only when
            something must be measured (building an int8 model takes a while).
        data: the gate's inputs, built only when measuring.
        cache: where figures are kept between starts; None measures every time.
        name: the model, for the log.
    """
    wanted = [p for p in offered if p != "fp32" and p != "fp16"]
    if requested not in ("auto", *wanted):
        wanted = []  # fp32, fp16 (CUDA: no gate here) or a path not offered
    elif requested != "auto":
        wanted = [requested]
    figures = cache.load() if cache is not None else {}
    missing = [p for p in wanted if p not in figures]
    if missing:
        began = time.perf_counter()
        try:
            gate = data()
        except (ImportError, OSError) as error:  # e.g. scikit-image not installed
            return _ungated(requested, offered, f"the parity gate cannot run here: {error}")
        try:
            reference, candidates = runners(missing)
            figures.update(measure_gate(reference, candidates, gate))
        except Exception as error:  # a path that cannot even be built never serves under auto
            if requested != "auto":
                raise
            log.exception("precision gate for %s failed; serving fp32", name)
            return _ungated(requested, offered, f"the parity gate failed: {error}")
        log.info(
            "precision gate for %s measured in %.1f s on %s",
            name,
            time.perf_counter() - began,
            gate.description,
        )
        if cache is not None:
            cache.store(figures, gate.description)
    choice = choose_precision(requested, offered, {p: figures[p] for p in wanted})
    for figures_line in choice.figures.values():
        log.info("precision gate %s: %s", name, figures_line.summary())
    if choice.warning:
        log.warning("%s: %s", name, choice.warning)
    return choice


def training_generator(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``ccnet synth`` settings a checkpoint (or an export's sidecar) was trained on."""
    provenance = meta.get("provenance") or {}
    generator = provenance.get("data_generator") or (provenance.get("checkpoint") or {}).get(
        "data_generator"
    )
    return dict(generator) if isinstance(generator, Mapping) else None


def file_key(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256 (models are keyed by content, not name)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def apply_precision(
    backend: InferenceBackend,
    requested: str,
    *,
    model_file: Path,
    cache_dir: Path,
    generator: Mapping[str, Any] | None,
    fp16: bool = True,
) -> PrecisionChoice:
    """Gate, choose and switch ``backend`` to a precision; the choice is kept on the backend.

    Args:
        requested: ``CCNET_PRECISION`` / ``--precision``.
        model_file: the file the backend runs (its content keys the gate's cache).
        cache_dir: ``CCNET_CACHE_DIR``.
        generator: ``training_generator(meta)``: the validation data the gate rebuilds.
        fp16: ``CCNET_FP16``: whether ``auto`` may pick fp16 on CUDA.
    """
    supported = getattr(backend, "precisions", ("fp32",))
    offered = tuple(p for p in offered_precisions(backend.name, backend.device) if p in supported)
    if requested == "auto" and "fp16" in offered and not fp16:
        requested = "fp32"
    info = backend.info
    cache = GateCache(
        cache_dir, f"{info.name}-{file_key(model_file)}-{backend.name}-{detect_cpu().key()}"
    )
    choice = select_precision(
        requested,
        offered,
        runners=backend.precision_runners,
        data=lambda: gate_data(info.kind, len(info.classes), generator, frames=info.window or 4),
        cache=cache,
        name=info.name,
    )
    backend.use_precision(choice.precision)
    backend.precision_choice = choice
    cpu = detect_cpu()
    log.info(
        "%s runs %s on %s (%s: %s; %.2fx fp32; CPU %s, %s)",
        info.name,
        choice.precision,
        backend.name,
        requested,
        choice.reason,
        choice.speedup,
        cpu.model,
        ", ".join(cpu.flags) or "no AMX/AVX512-BF16/VNNI",
        extra={"model": info.name, "precision": choice.precision},
    )
    return choice


def configure_backend(
    backend: InferenceBackend, settings: Any, model_file: Path, meta: Mapping[str, Any]
) -> InferenceBackend:
    """What the loader does to every fresh backend: the load-adaptive thread policy
    (``threads``) and the precision from ``settings.precision`` (gated, cached)."""
    from service.core.config import available_cores

    from .threads import ThreadPolicy

    if backend.device == "cpu":
        cores = max(1, available_cores() // max(1, int(getattr(settings, "workers", 1))))
        backend.thread_policy = ThreadPolicy(cores, fixed=int(getattr(settings, "threads", 0)))
    apply_precision(
        backend,
        getattr(settings, "precision", "auto"),
        model_file=model_file,
        cache_dir=Path(settings.cache_dir),
        generator=training_generator(meta),
        fp16=bool(getattr(settings, "fp16", True)),
    )
    return backend


def precision_entry(backend: InferenceBackend) -> dict[str, object]:
    """A backend's /v1/models ``precision`` entry (also for backends never gated)."""
    if backend.precision_choice is not None:
        return backend.precision_choice.describe()
    return {"requested": backend.precision, "chosen": backend.precision, "speedup": 1.0}


def record_precision_metrics(metrics: Any, backend: InferenceBackend) -> None:
    """Set the /metrics precision gauges (``ServiceMetrics.precision``/``precision_speedup``)."""
    entry = precision_entry(backend)
    cpu = detect_cpu()
    metrics.precision.labels(
        backend.info.name,
        backend.name,
        str(entry["chosen"]),
        str(entry["requested"]),
        "amx" if cpu.amx_bf16 or cpu.amx_int8 else "no",
        "yes" if cpu.avx512_bf16 else "no",
        "yes" if cpu.native_int8 else "no",
    ).set(1)
    speedup = entry["speedup"]
    metrics.precision_speedup.labels(backend.info.name).set(
        float(speedup) if isinstance(speedup, int | float) else 1.0
    )


def resolve_checkpoint_precision(
    requested: str,
    checkpoint: Path,
    model: Any,
    meta: Mapping[str, Any],
    device: str,
    cache_dir: Path,
) -> str:
    """The precision ``ccnet evaluate`` runs a checkpoint in: what the torch backend of the
    service would run it in here (the same gate, the same cache). int8 is an ONNX Runtime
    path, so it is refused rather than silently replaced."""
    from .loading import info_from_meta
    from .torch_backend import TorchBackend

    if requested == "int8":
        raise ValueError(
            f"{checkpoint}: int8 runs on ONNX Runtime (ccnet serve/predict --backend "
            "onnxruntime --precision int8); evaluate a checkpoint in auto, fp32, bf16 or fp16"
        )
    if requested == "fp32":
        return "fp32"
    info = info_from_meta(None, dict(meta), checkpoint)
    backend = TorchBackend(info, model, meta, device=device, precision="fp32")
    choice = apply_precision(
        backend,
        requested,
        model_file=checkpoint,
        cache_dir=cache_dir,
        generator=training_generator(meta),
    )
    return choice.precision


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager[object]:
    """The autocast context of a torch precision (bf16 on CPU, fp16 on CUDA; fp32: none)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type, dtype=torch.float16)
    return contextlib.nullcontext()
