"""Glue between a loaded backend and the precision policy: measure (or read from the cache)
what the gate needs, decide, switch the backend, log why.

The data (``gate``), the decision (``policy``) and the cache (``cache``) live apart; this
module only wires them to a backend, for the loader (``configure_backend``) and for
``ccnet evaluate`` (``resolve_checkpoint_precision``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccnet.inference.backends.base import info_from_meta
from ccnet.inference.backends.threads import ThreadPolicy
from ccnet.inference.metadata import check_metadata
from ccnet.inference.options import DEFAULT_CLIP_WINDOW, available_cores
from ccnet.inference.precision.cache import GateCache
from ccnet.inference.precision.capabilities import detect_cpu
from ccnet.inference.precision.gate import GateData, Runner, gate_data, measure_gate
from ccnet.inference.precision.policy import PrecisionChoice, choose_precision, offered_precisions
from ccnet.model.files import file_key

if TYPE_CHECKING:
    from ccnet.inference.backends.base import InferenceBackend
    from ccnet.inference.options import LoadOptions

__all__ = [
    "apply_precision",
    "configure_backend",
    "precision_entry",
    "resolve_checkpoint_precision",
    "select_precision",
    "training_generator",
]

log = logging.getLogger("ccnet.inference.precision")


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
        # the first start on a machine (or after a model or library change) measures: say so,
        # or a silent pause of several seconds looks like a hang
        log.info(
            "precision gate for %s: measuring fp32 against %s on this CPU (once; the figures "
            "are cached%s)",
            name,
            ", ".join(missing),
            f" in {cache.path}" if cache is not None else "",
        )
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
    """The ``ccnet synth`` settings a checkpoint (or an export's sidecar) was trained on
    (bounded: ``check_metadata`` refuses a scene side or seed out of range)."""
    check_metadata(meta, "the model's metadata")
    provenance = meta.get("provenance") or {}
    generator = provenance.get("data_generator") or (provenance.get("checkpoint") or {}).get(
        "data_generator"
    )
    return dict(generator) if isinstance(generator, Mapping) else None


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
        data=lambda: gate_data(
            info.kind, len(info.classes), generator, frames=info.window or DEFAULT_CLIP_WINDOW
        ),
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
    backend: InferenceBackend, options: LoadOptions, model_file: Path, meta: Mapping[str, Any]
) -> InferenceBackend:
    """What the loader does to every fresh backend: the load-adaptive thread policy
    (``options.threads``) and the precision from ``options.precision`` (gated, cached)."""
    if backend.device == "cpu":
        cores = max(1, available_cores() // options.processes)
        backend.thread_policy = ThreadPolicy(cores, fixed=options.threads)
    apply_precision(
        backend,
        options.precision,
        model_file=model_file,
        cache_dir=Path(options.cache_dir),
        generator=training_generator(meta),
        fp16=options.fp16,
    )
    return backend


def precision_entry(backend: InferenceBackend) -> dict[str, object]:
    """A backend's /v1/models ``precision`` entry (also for backends never gated)."""
    if backend.precision_choice is not None:
        return backend.precision_choice.describe()
    return {"requested": backend.precision, "chosen": backend.precision, "speedup": 1.0}


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
    from ccnet.inference.backends.torch_backend import TorchBackend

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
