"""The parity gate's data and measurement: a reduced-precision path against fp32.

A path passes when its argmax agrees with fp32's on >= 99.5 % of the pixels of real
photographs (scikit-image's samples) and of the model's validation data, and its mIoU on
that data is within 0.5 points of fp32's (when the data has labels: the checkpoint records
the ``ccnet synth`` generator it was trained on, whose validation scenes are rendered again
from its seed). The photographs are also timed, interleaved with fp32, for the speed-up.
``precision`` decides from these figures; this module only measures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ccnet.inference.backends.base import Runner
from ccnet.model.samples import sample_photograph

__all__ = [
    "GATE_MAX_MIOU_DROP",
    "GATE_MIN_AGREEMENT",
    "GateData",
    "GateFigures",
    "Runner",
    "gate_data",
    "measure_gate",
]

GATE_MIN_AGREEMENT = 0.995  # fraction of pixels whose class matches fp32's
GATE_MAX_MIOU_DROP = 0.5  # mIoU points (of 100) a path may lose against fp32
_PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket")
_PHOTO_SIDE = 320  # long side of the gate photographs (multiple of 8)
_CLIP_SIDE = 160  # the same, for clip models (T frames each: the gate stays a few seconds)
_VAL_SCENES = 24
_VAL_CLIPS = 4

# ------------------------------------------------------------------------------- gate data


@dataclass
class GateData:
    """Inputs of the gate, float32 RGB 0..255 with batch axis 1, one array per item.

    Attributes:
        photographs: real photographs (agreement and timing).
        validation: the model's validation inputs (agreement, and mIoU with ``labels``).
        labels: class ids per validation item, or None when the model's data is unknown.
        num_classes: K, for the mIoU.
        description: where the data came from, for logs and /v1/models.
    """

    photographs: list[np.ndarray]
    validation: list[np.ndarray]
    labels: list[np.ndarray] | None
    num_classes: int
    description: str


def _photograph(name: str, side: int) -> np.ndarray:
    from PIL import Image

    rgb = sample_photograph(name)
    scale = side / max(rgb.shape[:2])
    height, width = (max(8, round(n * scale / 8) * 8) for n in rgb.shape[:2])
    image = Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _chw(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 → (1, 3, ..., H, W) float32."""
    return np.ascontiguousarray(np.moveaxis(rgb.astype(np.float32), -1, 0)[None])


def _pan(rgb: np.ndarray, frames: int) -> np.ndarray:
    """A clip (T, H, W, 3) from a photograph: the image shifted a few pixels per frame."""
    return np.stack([np.roll(rgb, (2 * t, 3 * t), axis=(0, 1)) for t in range(frames)])


def gate_data(
    kind: str,
    num_classes: int,
    generator: Mapping[str, Any] | None,
    *,
    frames: int = 4,
) -> GateData:
    """The gate's inputs for a model of ``kind`` ("image"/"video").

    Args:
        num_classes: the model's K.
        generator: the checkpoint's ``provenance["data_generator"]`` when it was trained on
            ``ccnet synth`` data: its validation split is rendered again (the first scenes,
            byte-identical to the files ``ccnet synth`` wrote) with labels, so mIoU is
            checked. Otherwise synthetic scenes stand in, agreement only.
        frames: frames per clip for video models.
    """
    from ccnet.inference.synth_scenes import CLASSES, render_clip, render_scene, sample_rng

    own = (
        generator is not None
        and generator.get("name") == "ccnet synth"
        and num_classes == len(CLASSES)
    )
    seed = int(generator.get("seed", 0)) if own and generator else 0
    size = int(generator.get("size", 128)) if own and generator else 128
    side = _CLIP_SIDE if kind == "video" else _PHOTO_SIDE
    photos = [_photograph(name, side) for name in _PHOTOGRAPHS]
    validation, labels = [], []
    if kind == "video":
        photographs = [_chw(_pan(photo, frames)) for photo in photos]
        for index in range(_VAL_CLIPS):
            images, masks, _ = render_clip(sample_rng(seed, "clips", "val", index), size, frames)
            validation.append(_chw(np.stack(images)))
            labels.append(np.stack(masks)[None])
    else:
        photographs = [_chw(photo) for photo in photos]
        for index in range(_VAL_SCENES):
            image, mask = render_scene(sample_rng(seed, "images", "val", index), size)
            validation.append(_chw(image))
            labels.append(mask[None])
    where = (
        f"ccnet synth val split (seed {seed}, {size} px, first {len(validation)})"
        if own
        else f"{len(validation)} synthetic scenes (the model's own data is unknown; no mIoU)"
    )
    return GateData(
        photographs=photographs,
        validation=validation,
        labels=labels if own else None,
        num_classes=num_classes,
        description=f"{len(photos)} photographs ({', '.join(_PHOTOGRAPHS)}); {where}",
    )


# ------------------------------------------------------------------------------ gate figures


@dataclass(frozen=True)
class GateFigures:
    """One path's measured figures against fp32.

    Attributes:
        precision: the path.
        photo_agreement, val_agreement: fraction of pixels whose argmax matches fp32's.
        miou_fp32, miou: mIoU in points (0..100) on the labelled validation data, or None.
        ms_fp32, ms: summed forward time on the photographs, in milliseconds.
    """

    precision: str
    photo_agreement: float
    val_agreement: float
    miou_fp32: float | None
    miou: float | None
    ms_fp32: float
    ms: float

    @property
    def speedup(self) -> float:
        return self.ms_fp32 / self.ms if self.ms > 0 else 0.0

    def failures(self) -> list[str]:
        """Why the path fails the gate (empty when it passes)."""
        reasons = []
        for what, value in (("photographs", self.photo_agreement), ("val", self.val_agreement)):
            if not value >= GATE_MIN_AGREEMENT:
                reasons.append(
                    f"argmax agreement on {what} {100 * value:.2f} % < "
                    f"{100 * GATE_MIN_AGREEMENT:.1f} %"
                )
        if self.miou is not None and self.miou_fp32 is not None:
            drop = self.miou_fp32 - self.miou
            if not drop <= GATE_MAX_MIOU_DROP:
                reasons.append(
                    f"mIoU {self.miou:.2f} vs fp32 {self.miou_fp32:.2f} "
                    f"(-{drop:.2f} > {GATE_MAX_MIOU_DROP} points)"
                )
        return reasons

    @property
    def passed(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        """One line for the log."""
        miou = (
            f", mIoU {self.miou:.2f} vs {self.miou_fp32:.2f}"
            if self.miou is not None and self.miou_fp32 is not None
            else ""
        )
        return (
            f"{self.precision}: {self.speedup:.2f}x fp32, agreement photographs "
            f"{100 * self.photo_agreement:.2f} % / val {100 * self.val_agreement:.2f} %{miou}"
        )

    def describe(self) -> dict[str, object]:
        """For /v1/models (JSON has no NaN: an unmeasurable figure is null)."""
        figures = {
            k: v if not isinstance(v, float) or math.isfinite(v) else None
            for k, v in asdict(self).items()
        }
        return {
            **figures,
            "speedup": round(self.speedup, 3),
            "passed": self.passed,
            "failures": self.failures(),
        }


class _Confusion:
    def __init__(self, k: int) -> None:
        self.k = k
        self.matrix = np.zeros((k, k), dtype=np.int64)

    def add(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        valid = truth < self.k  # 255 = ignore
        codes = truth[valid].astype(np.int64) * self.k + prediction[valid]
        self.matrix += np.bincount(codes, minlength=self.k * self.k).reshape(self.k, self.k)

    def miou(self) -> float:
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        present = union > 0
        return float(100 * np.mean(tp[present] / union[present])) if present.any() else math.nan


TIMING_ROUNDS = 3  # interleaved timing rounds per photograph; the best round counts


def measure_gate(
    reference: Runner, candidates: Mapping[str, Runner], data: GateData
) -> dict[str, GateFigures]:
    """Run fp32 (``reference``) and every candidate on the gate data; figures per candidate.

    Photographs are timed interleaved (fp32, then each candidate, per photograph, after one
    untimed warm-up each), so a load change on the machine hits every path alike, in
    ``TIMING_ROUNDS`` rounds; each path's time on a photograph is its best round (another
    process can only add time to a run, never take it away), so a busy moment on one start
    does not flip the decision the next start makes.
    """
    names = list(candidates)
    for runner in (reference, *candidates.values()):
        runner(data.photographs[0])  # warm-up: lazy kernel set-up is not the path's speed
    agree = {name: [0, 0] for name in names}
    val_agree = {name: [0, 0] for name in names}
    seconds = {name: 0.0 for name in ["fp32", *names]}
    runners = {"fp32": reference, **candidates}
    for photo in data.photographs:
        best = {name: math.inf for name in runners}
        masks: dict[str, np.ndarray] = {}
        for _ in range(TIMING_ROUNDS):
            for name, runner in runners.items():
                began = time.perf_counter()
                masks[name] = runner(photo).argmax(1)
                best[name] = min(best[name], time.perf_counter() - began)
        for name in runners:
            seconds[name] += best[name]
        truth = masks["fp32"]
        for name in names:
            agree[name][0] += int((masks[name] == truth).sum())
            agree[name][1] += truth.size
    labelled = data.labels is not None
    confusion = {name: _Confusion(data.num_classes) for name in ["fp32", *names]}
    for index, item in enumerate(data.validation):
        truth = reference(item).argmax(1)
        if labelled:
            confusion["fp32"].add(truth, data.labels[index])
        for name in names:
            mask = candidates[name](item).argmax(1)
            val_agree[name][0] += int((mask == truth).sum())
            val_agree[name][1] += truth.size
            if labelled:
                confusion[name].add(mask, data.labels[index])
    return {
        name: GateFigures(
            precision=name,
            photo_agreement=agree[name][0] / max(agree[name][1], 1),
            val_agreement=val_agree[name][0] / max(val_agree[name][1], 1),
            miou_fp32=confusion["fp32"].miou() if labelled else None,
            miou=confusion[name].miou() if labelled else None,
            ms_fp32=1e3 * seconds["fp32"],
            ms=1e3 * seconds[name],
        )
        for name in names
    }
