"""Does an exported model compute what the PyTorch model computes? Inputs, runs and verdicts.

Every check runs the same batch through both sides: a seeded random-noise image and two real
photographs shipped with scikit-image (``astronaut``, ``coffee``), resized to the check size.
Clips (CCNet3D) are pans across those photographs, and noise frames. The batch is given as
RGB values in 0..255, which is the exported model's input contract; the PyTorch side applies the
checkpoint's normalisation itself.

Criteria (module constants, read at call time so tests can tighten them):

* fp32 ONNX: max |ONNX - PyTorch| on the logits <= ``FP32_MAX_RELATIVE_ERROR`` × the logits'
  scale (their max magnitude), per check size;
* fp16 ONNX: per-pixel argmax agreement with the float32 PyTorch model >=
  ``FP16_MIN_ARGMAX_AGREEMENT`` per check size (fp16 cannot match logits to 1e-4; what the user
  gets is the mask), counted over the pixels fp16 can decide at all: those whose float32 top-2
  margin exceeds ``FP16_RESOLUTION`` × the logit scale (the spacing of float16 numbers at that
  scale; two logits closer than that are one number in float16, so which wins is a coin toss,
  not a fault of the export). At most ``FP16_MAX_UNRESOLVED`` of the pixels may be that close,
  so a model of near-ties cannot pass on a few decided pixels; both agreements, over all pixels
  and over decided ones, are reported and recorded;
* non-finite output always fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ccnet.export._progress import Progress
from ccnet.model.samples import sample_photograph

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "CLIP_FRAMES",
    "DEFAULT_CHECK_SIZES",
    "FP16_MAX_UNRESOLVED",
    "FP16_MIN_ARGMAX_AGREEMENT",
    "FP16_RESOLUTION",
    "FP32_MAX_RELATIVE_ERROR",
    "Criterion",
    "ParityCase",
    "ParityError",
    "ParityReport",
    "check_onnx",
    "compare_logits",
    "onnx_criterion",
    "onnxruntime_session",
    "sample_batch",
]

FP32_MAX_RELATIVE_ERROR = 1e-4
FP16_MIN_ARGMAX_AGREEMENT = 0.999
FP16_RESOLUTION = 2.0**-10  # float16 keeps 10 fraction bits: numbers in [s, 2s) are s/1024 apart
FP16_MAX_UNRESOLVED = 0.02  # the bundled demo model has 0.3% of pixels that close
# The second size is not a multiple of the output stride (8): resizing paths get exercised.
DEFAULT_CHECK_SIZES: tuple[tuple[int, int], ...] = ((192, 256), (225, 167))
CLIP_FRAMES = (3, 2)  # frames of the clip at each check size: the frames axis varies too
PHOTOGRAPHS = ("astronaut", "coffee")


class ParityError(ValueError):
    """An export disagrees with its reference beyond the criterion (message says by how much)."""


@dataclass(frozen=True)
class Criterion:
    """What "agrees" means: a bound on the relative logit error and/or on argmax agreement.

    With ``resolution`` set, the agreement is counted over the pixels whose reference top-2
    margin exceeds ``resolution`` × the logit scale, and at most ``max_unresolved`` of the
    pixels may fall below it.
    """

    max_relative_error: float | None = None
    min_argmax_agreement: float | None = None
    resolution: float | None = None
    max_unresolved: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_relative_error is not None:
            parts.append(f"max |error| <= {self.max_relative_error:g} × logit scale")
        if self.min_argmax_agreement is not None:
            where = ""
            if self.resolution is not None:
                where = (
                    f" on pixels whose reference top-2 margin exceeds {self.resolution:g} × "
                    f"logit scale (at most {self.max_unresolved or 0:.1%} of pixels closer)"
                )
            parts.append(f"argmax agreement >= {self.min_argmax_agreement:.3%}{where}")
        return " and ".join(parts) + " (finite outputs)"


def onnx_criterion(dtype: str, fp16_min_agreement: float | None = None) -> Criterion:
    """The acceptance criterion for an ONNX export in ``dtype`` ("fp32" or "fp16").

    ``fp16_min_agreement`` overrides ``FP16_MIN_ARGMAX_AGREEMENT``: an untrained network has
    near-tied logits everywhere, so fp16 rounding flips more pixels than it does for a
    trained one; the sidecar records whichever bound was applied.
    """
    if dtype == "fp32":
        return Criterion(max_relative_error=FP32_MAX_RELATIVE_ERROR)
    agreement = FP16_MIN_ARGMAX_AGREEMENT if fp16_min_agreement is None else fp16_min_agreement
    return Criterion(
        min_argmax_agreement=agreement,
        resolution=FP16_RESOLUTION,
        max_unresolved=FP16_MAX_UNRESOLVED,
    )


@dataclass(frozen=True)
class ParityCase:
    """The comparison at one input shape."""

    inputs: str
    shape: tuple[int, ...]
    max_abs_error: float
    logit_scale: float
    relative_error: float
    argmax_agreement: float  # over every pixel
    passed: bool
    # over the pixels the criterion's resolution can decide, and the share of the others
    # (equal to argmax_agreement and 0 when the criterion sets no resolution)
    resolved_agreement: float = 1.0
    unresolved_fraction: float = 0.0

    def describe(self) -> str:
        shape = "×".join(map(str, self.shape))
        text = (
            f"{shape} ({self.inputs}): max |error| {self.max_abs_error:.3g} = "
            f"{self.relative_error:.3g} of the logit scale {self.logit_scale:.3g}, "
            f"argmax agreement {self.argmax_agreement:.4%}"
        )
        if self.unresolved_fraction or self.resolved_agreement != self.argmax_agreement:
            text += (
                f" over all pixels, {self.resolved_agreement:.4%} over the "
                f"{1 - self.unresolved_fraction:.2%} whose reference margin fp16 resolves"
            )
        return text


@dataclass(frozen=True)
class ParityReport:
    """All cases of one check, with what was compared against what."""

    candidate: str
    reference: str
    criterion: Criterion
    cases: tuple[ParityCase, ...]

    @property
    def passed(self) -> bool:
        return all(case.passed for case in self.cases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "reference": self.reference,
            "criterion": {**asdict(self.criterion), "text": self.criterion.describe()},
            "passed": self.passed,
            "cases": [{**asdict(c), "shape": list(c.shape)} for c in self.cases],
        }

    def raise_if_failed(self, what: str, target: object) -> None:
        """ParityError listing every case (failing ones marked) if any failed; ``target`` is
        what was therefore not written."""
        if self.passed:
            return
        lines = [f"{'FAIL' if not c.passed else 'ok  '} {c.describe()}" for c in self.cases]
        raise ParityError(
            f"{what}: {self.candidate} disagrees with {self.reference}; required "
            f"{self.criterion.describe()}:\n  "
            + "\n  ".join(lines)
            + f"\nnothing was written to {target}"
        )


def compare_logits(
    candidate: np.ndarray, reference: np.ndarray, criterion: Criterion, inputs: str
) -> ParityCase:
    """Compare logits ``(N, K, ...)`` of the candidate with the reference under ``criterion``."""
    if candidate.shape != reference.shape:
        raise ParityError(
            f"output shape {candidate.shape} differs from the reference's {reference.shape}"
        )
    candidate = candidate.astype(np.float64)
    reference = reference.astype(np.float64)
    finite = bool(np.isfinite(candidate).all())
    error = float(np.abs(candidate - reference).max()) if finite else float("inf")
    scale = max(float(np.abs(reference).max()), 1e-12)
    agrees = candidate.argmax(axis=1) == reference.argmax(axis=1)
    agreement = float(agrees.mean())
    resolved_agreement, unresolved = agreement, 0.0
    if criterion.resolution is not None and reference.shape[1] > 1:
        top2 = np.partition(reference, reference.shape[1] - 2, axis=1)[:, -2:]
        resolved = (top2[:, 1] - top2[:, 0]) > criterion.resolution * scale
        unresolved = float(1.0 - resolved.mean())
        resolved_agreement = float(agrees[resolved].mean()) if resolved.any() else 0.0
    passed = finite
    if criterion.max_relative_error is not None:
        passed = passed and error <= criterion.max_relative_error * scale
    if criterion.min_argmax_agreement is not None:
        passed = passed and resolved_agreement >= criterion.min_argmax_agreement
    if criterion.max_unresolved is not None:
        passed = passed and unresolved <= criterion.max_unresolved
    return ParityCase(
        inputs=inputs,
        shape=tuple(reference.shape),
        max_abs_error=error,
        logit_scale=scale,
        relative_error=error / scale,
        argmax_agreement=agreement,
        passed=passed,
        resolved_agreement=resolved_agreement,
        unresolved_fraction=unresolved,
    )


# ---------------------------------------------------------------------------- inputs


def _resized(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _pan(rgb: np.ndarray, frames: int, height: int, width: int) -> np.ndarray:
    """A clip (T, h, w, 3): a window of 3/4 of the photograph sliding diagonally."""
    full_h, full_w = rgb.shape[:2]
    crop_h, crop_w = full_h * 3 // 4, full_w * 3 // 4
    clip = []
    for t in range(frames):
        shift = t / max(frames - 1, 1)
        top, left = round(shift * (full_h - crop_h)), round(shift * (full_w - crop_w))
        clip.append(_resized(rgb[top : top + crop_h, left : left + crop_w], height, width))
    return np.stack(clip)


def sample_batch(
    height: int, width: int, *, frames: int | None = None, seed: int = 0
) -> tuple[np.ndarray, str]:
    """The check batch at one size: noise, astronaut, coffee, as float32 RGB 0..255.

    Args:
        height: image height.
        width: image width.
        frames: None for images ``(3, 3, H, W)``; T for clips ``(3, 3, T, H, W)``.
        seed: seed of the noise.

    Returns:
        ``(batch, description)``.
    """
    rng = np.random.default_rng(seed)
    noise_shape = (height, width, 3) if frames is None else (frames, height, width, 3)
    items = [rng.integers(0, 256, noise_shape, dtype=np.uint8)]
    for name in PHOTOGRAPHS:
        photo = sample_photograph(name)
        items.append(
            _resized(photo, height, width) if frames is None else _pan(photo, frames, height, width)
        )
    batch = np.stack(items).astype(np.float32)  # (N, [T,] H, W, 3)
    batch = np.moveaxis(batch, -1, 1)  # (N, 3, [T,] H, W)
    kind = "noise" if frames is None else "noise clip"
    return np.ascontiguousarray(batch), ", ".join([kind, *PHOTOGRAPHS])


def onnxruntime_session(model: bytes) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session for a serialised model (it inlines the local functions)."""
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("ONNX Runtime is needed: pip install -e '.[export]'") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the fp16 Cast-insertion notes are expected
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def check_onnx(
    model: bytes,
    reference: Callable[[np.ndarray], np.ndarray],
    *,
    dtype: str,
    video: bool,
    sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES,
    criterion: Criterion | None = None,
    progress: Progress | None = None,
) -> ParityReport:
    """Run ``model`` in ONNX Runtime and ``reference`` on the same batches at every size.

    Args:
        model: the serialised ONNX model.
        reference: RGB 0..255 batch -> float32 logits (the PyTorch model, float32).
        dtype: the export dtype, which picks the criterion.
        video: clips instead of images.
        sizes: (height, width) of each check; at least two distinct sizes are expected.
        criterion: overrides ``onnx_criterion(dtype)``.
        progress: called with a line per case.
    """
    import onnxruntime

    session = onnxruntime_session(model)
    input_name = session.get_inputs()[0].name
    criterion = criterion or onnx_criterion(dtype)
    cases = []
    for index, (height, width) in enumerate(sizes):
        frames = CLIP_FRAMES[index % len(CLIP_FRAMES)] if video else None
        batch, inputs = sample_batch(height, width, frames=frames)
        (candidate,) = session.run(None, {input_name: batch})
        case = compare_logits(candidate, reference(batch), criterion, inputs)
        if progress is not None:
            progress(f"  {'ok' if case.passed else 'FAIL'} {case.describe()}")
        cases.append(case)
    return ParityReport(
        candidate=f"ONNX Runtime {onnxruntime.__version__} (CPU), {dtype} model",
        reference="PyTorch float32 model (eager)",
        criterion=criterion,
        cases=tuple(cases),
    )
