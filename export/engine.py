"""``ccnet export tensorrt``: an exported ONNX to a TensorRT engine with our plugin, checked.

Steps: stop at once, with a clear message, where TensorRT or a CUDA GPU is missing; read the
ONNX sidecar (input name and rank, dtype, the custom ops); load the plugin library into
TensorRT's plugin registry through the process-wide loader (``export.runtime.plugins``: a second
build in the same process reuses it) and make sure it registers every op the graph uses; parse
the ONNX; build with one optimisation profile (``--min/--opt/--max``); run the engine on a real
photograph batch at the ``opt`` shape (``export.runtime.runner.EngineRunner``, the code the
service runs engines with) and compare it with ONNX Runtime; only then write ``engine.plan`` and
its sidecar ``engine.json`` (with the SHA-256 of both the engine and the plugin build)
atomically.

Plugin or standard layers. Each ``ccnet::CrissCrossAttention[3d]`` node carries
``plugin_namespace``, so TensorRT's parser imports it as our plugin when one is registered, else
as the node's ONNX local function (standard layers: correct, slower). When a plugin library is
given we also drop the local functions from the copy we parse: older parsers preferred a local
function over any plugin, and would otherwise build without the plugin, silently. The build then
checks that the network has one plugin layer per attention node.

Precision. TensorRT 10+ networks are strongly typed: the engine computes in the types of the
ONNX (an fp16 engine comes from ``ccnet export onnx --dtype fp16``); no builder precision flags
are set. TF32 stays at TensorRT's default (on), so an fp32 engine is compared by argmax
agreement, with the relative logit error recorded alongside.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ccnet.export._progress import Progress, silent, to_stderr

# The runtime side owns these; they stay importable from here for the export commands.
from ccnet.export.runtime.availability import require_tensorrt, tensorrt_unavailable_reason
from ccnet.export.runtime.plugins import DEFAULT_PLUGIN, PLUGIN_ENV, load_plugin, resolve_plugin
from ccnet.export.runtime.sidecar import ENGINE_FORMAT, ENGINE_VERSION

__all__ = [
    "DEFAULT_PLUGIN",
    "ENGINE_FORMAT",
    "ENGINE_MIN_ARGMAX_AGREEMENT",
    "PLUGIN_ENV",
    "EngineBuild",
    "ShapeProfile",
    "build_engine",
    "parse_shape",
    "require_tensorrt",
    "resolve_plugin",
    "tensorrt_unavailable_reason",
]

ENGINE_MIN_ARGMAX_AGREEMENT = 0.999
_SHAPE = re.compile(r"^\d+(x\d+)+$")


# ---------------------------------------------------------------------------- shapes


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x128x128"`` -> ``(1, 3, 128, 128)``; clips ``"1x3x2x128x128"``.

    Raises:
        ValueError: not 4 or 5 positive integers joined by ``x``.
    """
    cleaned = text.strip().lower()
    if not _SHAPE.match(cleaned):
        raise ValueError(f"shape {text!r} is not like 1x3x512x512 (N x 3 x [T x] H x W)")
    shape = tuple(int(part) for part in cleaned.split("x"))
    if len(shape) not in (4, 5):
        raise ValueError(f"shape {text!r} has {len(shape)} dims; images take 4, clips 5")
    if any(d < 1 for d in shape):
        raise ValueError(f"shape {text!r} has a dimension below 1")
    if shape[1] != 3:
        raise ValueError(f"shape {text!r}: the channel dim (2nd) must be 3 (RGB), got {shape[1]}")
    return shape


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimisation profile for the model input.

    Raises:
        ValueError: ranks differ, or ``min <= opt <= max`` fails on some axis.
    """

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(
                f"--min/--opt/--max need the same number of dims, got "
                f"{_text(self.min)}, {_text(self.opt)}, {_text(self.max)}"
            )
        for axis, (lo, mid, hi) in enumerate(zip(self.min, self.opt, self.max, strict=True)):
            if not lo <= mid <= hi:
                raise ValueError(
                    f"dim {axis}: need min <= opt <= max, got {lo}, {mid}, {hi} "
                    f"({_text(self.min)} / {_text(self.opt)} / {_text(self.max)})"
                )

    @property
    def rank(self) -> int:
        return len(self.min)

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


# ---------------------------------------------------------------------------- build


@dataclass(frozen=True)
class EngineBuild:
    """What ``build_engine`` wrote."""

    engine_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]


def _model_bytes(onnx_path: Path, strip_functions: bool) -> bytes:
    """The ONNX to parse; without the attention functions when the plugin must be used."""
    import onnx

    from ccnet.export.onnx_functions import detach_functions

    model = onnx.load(str(onnx_path))
    if strip_functions:
        detach_functions(model)
    return model.SerializeToString()


def _parse(
    trt: ModuleType, builder: Any, data: bytes, onnx_path: Path, logger: Any
) -> tuple[Any, Any]:
    """(network, parser); keep the parser alive while the network is used (it owns weights)."""
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10; in 11 every network is strongly typed
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data, str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ValueError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    return network, parser


def _plugin_layers(trt: ModuleType, network: Any) -> int:
    kinds = {
        getattr(trt.LayerType, name)
        for name in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")
        if hasattr(trt.LayerType, name)
    }
    return sum(network.get_layer(i).type in kinds for i in range(network.num_layers))


@dataclass(frozen=True)
class _Built:
    """A serialised engine that passed its check on this GPU."""

    data: bytes
    plugin_layers: int
    check: dict[str, Any]
    device: str


def _build_and_check(
    trt: ModuleType,
    source: Path,
    meta: dict[str, Any],
    profile: ShapeProfile,
    library: Path | None,
    workspace_gib: float | None,
    engine_path: Path,
    say: Progress,
) -> _Built:
    """Parse, build, run on the opt shape and compare with ONNX Runtime (needs the GPU).

    Raises:
        ValueError: a parse or build failure, a plugin layer count that does not match the
            attention nodes, or ``ParityError`` when the engine disagrees with ONNX Runtime.
    """
    import numpy as np
    import torch

    from ccnet.export.parity import (
        Criterion,
        ParityReport,
        compare_logits,
        onnxruntime_session,
        sample_batch,
    )
    from ccnet.export.runtime.runner import EngineRunner

    logger = trt.Logger(trt.Logger.WARNING)
    spec = meta["inputs"][0]
    began = time.perf_counter()
    builder = trt.Builder(logger)
    data = _model_bytes(source, strip_functions=library is not None)
    network, parser = _parse(trt, builder, data, source, logger)
    expected = sum(op["nodes"] for op in meta["custom_ops"])
    plugins = _plugin_layers(trt, network)
    if library is not None and plugins != expected:
        raise ValueError(
            f"{source}: {expected} attention nodes but {plugins} plugin layers after parsing"
        )

    config = builder.create_builder_config()
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    optimisation = builder.create_optimization_profile()
    optimisation.set_shape(spec["name"], profile.min, profile.opt, profile.max)
    config.add_optimization_profile(optimisation)
    say(
        f"building ({meta['dtype']}, strongly typed) for {spec['name']} "
        f"{_text(profile.min)} .. {_text(profile.opt)} .. {_text(profile.max)}…"
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError(f"{source}: TensorRT failed to build the engine (see its log above)")
    del parser, network
    say(f"  built in {time.perf_counter() - began:.0f} s, {serialized.nbytes / 1e6:.1f} MB")

    video = len(profile.opt) == 5
    height, width = profile.opt[-2:]
    batch, inputs = sample_batch(height, width, frames=profile.opt[2] if video else None)
    batch = np.ascontiguousarray(batch[np.arange(profile.opt[0]) % len(batch)])
    say(f"checking against ONNX Runtime at {_text(profile.opt)}…")
    (expected_logits,) = onnxruntime_session(source.read_bytes()).run(None, {spec["name"]: batch})
    criterion = Criterion(min_argmax_agreement=ENGINE_MIN_ARGMAX_AGREEMENT)
    actual = EngineRunner(trt, serialized, label=f"the engine built from {source}").run(batch)
    case = compare_logits(actual, expected_logits, criterion, inputs)
    report = ParityReport(
        candidate=f"TensorRT {trt.__version__} engine on {torch.cuda.get_device_name()}",
        reference=f"ONNX Runtime (CPU) on {source.name}",
        criterion=criterion,
        cases=(case,),
    )
    say(f"  {'ok' if case.passed else 'FAIL'} {case.describe()}")
    report.raise_if_failed(f"engine for {source}", engine_path)

    return _Built(bytes(serialized), plugins, report.to_dict(), torch.cuda.get_device_name())


def build_engine(
    onnx_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    profile: ShapeProfile,
    *,
    plugin: str | os.PathLike[str] | None = None,
    workspace_gib: float | None = None,
    progress: Progress | None = to_stderr,
) -> EngineBuild:
    """Build, check and write a TensorRT engine for an ONNX written by ``ccnet export onnx``.

    Args:
        onnx_path: the model (its ``model.json`` sidecar must sit beside it).
        output: the engine file (``engine.plan``); its sidecar gets the ``.json`` suffix.
        profile: min/opt/max input shapes.
        plugin: the plugin library (see ``resolve_plugin`` for the fallbacks).
        workspace_gib: cap on TensorRT's workspace memory pool.
        progress: receives progress lines (stderr by default).

    Raises:
        ValueError: no TensorRT or GPU (checked first), a shape that does not fit the model,
            a plugin that does not load or lacks an op, a parse or build failure, or
            ``export.parity.ParityError`` when the engine disagrees with ONNX Runtime (nothing
            is written then).
        OSError: a missing input or an unwritable output.
    """
    trt = require_tensorrt()  # before anything else
    from ccnet.export.runtime.sidecar import read_sidecar, sidecar_path
    from ccnet.model.files import ensure_writable_dir, file_sha256, write_files_atomic

    say = progress or silent
    source = Path(onnx_path)
    meta = read_sidecar(source)
    spec = meta["inputs"][0]
    if profile.rank != len(spec["shape"]):
        kind = "clips (N x 3 x T x H x W)" if len(spec["shape"]) == 5 else "images (N x 3 x H x W)"
        raise ValueError(f"{source} takes {kind}; the profile has {profile.rank} dims")
    engine_path = Path(output)
    ensure_writable_dir(engine_path.parent)
    library = resolve_plugin(plugin)

    plugin_sha = None
    if library is not None:
        plugin_sha = load_plugin(library, runtime=trt, required=meta["custom_ops"]).sha256
        say(f"plugin: {library}")
    else:
        say("no plugin library (--plugin, $CCNET_TRT_PLUGIN): attention runs as standard layers")
    built = _build_and_check(trt, source, meta, profile, library, workspace_gib, engine_path, say)
    data = built.data
    sidecar = {
        "format": ENGINE_FORMAT,
        "version": ENGINE_VERSION,
        "engine_file": engine_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "onnx": {"file": str(source), "sha256": file_sha256(source)},
        "tensorrt": trt.__version__,
        "device": built.device,
        "plugin": str(library) if library is not None else None,
        "plugin_sha256": plugin_sha,
        "plugin_layers": built.plugin_layers,
        "custom_ops": meta["custom_ops"] if library is not None else [],
        "dtype": meta["dtype"],
        "profile": {spec["name"]: profile.to_dict()},
        "inputs": meta["inputs"],
        "outputs": meta["outputs"],
        "classes": meta["classes"],
        "palette": meta["palette"],
        "input_policy": meta["input_policy"],
        "check": built.check,
        "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    side = sidecar_path(engine_path)
    text = json.dumps(sidecar, indent=2) + "\n"
    write_files_atomic({engine_path: data, side: text.encode("utf-8")})
    say(f"wrote {engine_path} and {side.name}")
    return EngineBuild(engine_path, side, sidecar)
