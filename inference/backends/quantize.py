"""int8 models for ONNX Runtime: static QDQ quantization of an fp32 export, cached.

Only the convolutions are quantized (weights int8 per output channel, activations uint8 per
tensor, ranges from calibration): they are nearly all of the arithmetic, and ONNX Runtime
fuses each ``DequantizeLinear → Conv → QuantizeLinear`` into one VNNI int8 convolution. The
criss-cross attention nodes (and their softmax) stay in float32, as do the final resize and
everything between the convolutions that is not worth a requantization.

Calibration runs on the model's own kind of data, never on the gate's: the training split
of the ``ccnet synth`` generator the checkpoint records (the demo models), or synthetic
scenes plus two photographs that the gate does not use for any other model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cached_int8", "calibration_inputs", "quantize_int8"]

log = logging.getLogger("ccnet.service.models")
_CALIBRATION_SCENES = 16
_CALIBRATION_CLIPS = 4
_CALIBRATION_PHOTOGRAPHS = ("immunohistochemistry", "camera")  # not among the gate's


def calibration_inputs(
    kind: str, generator: Mapping[str, Any] | None, *, frames: int = 4
) -> list[np.ndarray]:
    """Calibration batches (1, 3, [T,] H, W) float32 RGB 0..255 for a model of ``kind``."""
    from ccnet.inference.synth_scenes import render_clip, render_scene, sample_rng
    from ccnet.model.samples import sample_photograph

    own = generator is not None and generator.get("name") == "ccnet synth"
    seed = int(generator.get("seed", 0)) if own and generator else 0
    size = int(generator.get("size", 128)) if own and generator else 128
    items: list[np.ndarray] = []
    if kind == "video":
        for index in range(_CALIBRATION_CLIPS):
            images, _, _ = render_clip(sample_rng(seed, "clips", "train", index), size, frames)
            items.append(np.stack(images))
    else:
        for index in range(_CALIBRATION_SCENES):
            image, _ = render_scene(sample_rng(seed, "images", "train", index), size)
            items.append(image)
        for name in _CALIBRATION_PHOTOGRAPHS:
            photo = sample_photograph(name)
            items.append(photo[::2, ::2])  # 256 px: the size the service sees
    return [np.ascontiguousarray(np.moveaxis(x.astype(np.float32), -1, 0)[None]) for x in items]


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list."""

    def __init__(self, input_name: str, items: list[np.ndarray]) -> None:
        self._items = iter([{input_name: item} for item in items])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_int8(source: Path, target: Path, calibration: list[np.ndarray]) -> Path:
    """Write the int8 QDQ model of the fp32 export ``source`` to ``target`` (atomic).

    Raises:
        ImportError: onnxruntime is not installed.
    """
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    session = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    del session
    reader = _Reader(input_name, calibration)
    CalibrationDataReader.register(_Reader)
    target.parent.mkdir(parents=True, exist_ok=True)
    # quantize_static writes calibration scratch files beside its temp dir; keep them out of
    # the cache, and write the result under a temporary name first
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch, _quiet_quantizer():
        partial = Path(scratch) / target.name
        quantize_static(
            str(source),
            str(partial),
            reader,  # type: ignore[arg-type]
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
        os.replace(partial, target)
    log.info("quantized %s to int8 in %s (%d calibration inputs)", source, target, len(calibration))
    return target


class _DropQuantizerAdvice(logging.Filter):
    """onnxruntime's quantizer logs advice on the *root* logger ("Please consider to run
    pre-processing before quantization"): the export is already shape-inferred and only its
    convolutions are quantized, so the advice does not apply, and a root-logger line in the
    service's output (once per process) reads like a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.WARNING
            and "onnxruntime" in record.pathname.replace("\\", "/")
        )


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Hold back onnxruntime's root-logger advice while quantizing. A NullHandler keeps
    ``logging.warning`` from installing a stderr handler on the root logger (it calls
    ``basicConfig`` when the root has none), which would echo every later log line twice."""
    root = logging.getLogger()
    quiet, placeholder = _DropQuantizerAdvice(), logging.NullHandler()
    root.addFilter(quiet)
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeHandler(placeholder)
        root.removeFilter(quiet)


def cached_int8(
    onnx_path: Path, cache_dir: Path, kind: str, meta: Mapping[str, Any], *, frames: int = 4
) -> Path:
    """The int8 model of an fp32 export, from ``CACHE/int8/`` or quantized now (once).

    Args:
        meta: the export's sidecar (or checkpoint metadata): its provenance names the
            calibration data.
    """
    from ccnet.inference.precision.select import training_generator
    from ccnet.model.files import file_key

    target = cache_dir / "int8" / f"{onnx_path.parent.name}-{file_key(onnx_path)}" / "model.onnx"
    if target.is_file():
        return target
    log.info("quantizing %s to int8 (once; cached in %s)", onnx_path, target.parent)
    inputs = calibration_inputs(kind, training_generator(meta), frames=frames)
    return quantize_int8(onnx_path, target, inputs)
