"""Response schemas: they document the API (OpenAPI at /docs) and tests validate against them.

Responses are serialised with orjson from plain dicts for speed; these models describe them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ClassInfo",
    "ClassStat",
    "ClipSegmentation",
    "CpuFeatures",
    "ErrorBody",
    "ErrorResponse",
    "FrameClassStat",
    "FrameStats",
    "Health",
    "ImageSegmentation",
    "LoadFailureInfo",
    "ModelEntry",
    "ModelList",
    "ModelVersionInfo",
    "PrecisionGate",
    "PrecisionInfo",
    "ReloadReportInfo",
    "ReloadResponse",
    "RunLengthEncoding",
    "TrainingCard",
]


class ErrorBody(BaseModel):
    """What went wrong, for programs (``code``) and people (``message``)."""

    code: str = Field(examples=["invalid_image"])
    message: str = Field(examples=["not a decodable image: cannot identify image file"])


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer."""

    error: ErrorBody


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "ready", "loading", "failed"]
    detail: str | None = None


class ClassInfo(BaseModel):
    """A class a model predicts: id (the mask's pixel value), name and display colour."""

    id: int
    name: str
    color: list[int] = Field(min_length=3, max_length=3, examples=[[128, 64, 128]])


class PrecisionGate(BaseModel):
    """One reduced-precision path measured against fp32 on this machine (the parity gate)."""

    precision: str
    photo_agreement: float | None = Field(description="argmax agreement on photographs")
    val_agreement: float | None = Field(description="argmax agreement on validation data")
    miou_fp32: float | None = None
    miou: float | None = None
    ms_fp32: float | None = None
    ms: float | None = None
    speedup: float
    passed: bool
    failures: list[str] = []


class CpuFeatures(BaseModel):
    """The CPU features that decide which precisions are offered."""

    model: str
    isa: str
    amx: bool
    avx512_bf16: bool
    vnni: bool
    flags: list[str] = []


class PrecisionInfo(BaseModel):
    """The numeric precision a model runs in and why (``CCNET_PRECISION``)."""

    requested: str = Field(examples=["auto"])
    chosen: str = Field(examples=["bf16"])
    offered: list[str] = []
    speedup: float = Field(description="measured speed-up of ``chosen`` over fp32")
    reason: str = ""
    gate: dict[str, PrecisionGate] = {}
    cpu: CpuFeatures | None = None


class TrainingCard(BaseModel):
    """What a model was trained on; for demo models, the commands to real weights."""

    data: str | None = Field(examples=["ccnet synth --kind images --seed 0: synthetic scenes"])
    synthetic: bool = Field(description="trained on generated textures, not photographs")
    val_miou: float | None = Field(None, description="validation mIoU (0..1) at training")
    summary: str
    real_weights: dict[str, str] | None = Field(
        None, description="convert / train commands (demo models only)"
    )


class ModelVersionInfo(BaseModel):
    """Which file content a model serves (a hot reload changes it)."""

    sha256: str = Field(description="SHA-256 of the model file's bytes")
    loaded_at: str = Field(description="when this version started serving (UTC, ISO 8601)")
    file: str = Field(description="the model file's name (no directory)", examples=["tiny.pt"])


class LoadFailureInfo(BaseModel):
    """A file in the models folder that failed to (re)load; what served before still does."""

    file: str = Field(examples=["tiny.pt"])
    sha256: str
    error: str = Field(description="why, in one line (the log has the details)")
    at: str = Field(description="when (UTC, ISO 8601)")


class ModelEntry(BaseModel):
    """A loaded model."""

    name: str = Field(examples=["ccnet-tiny"])
    kind: Literal["image", "video"]
    backend: Literal["torch", "onnxruntime", "tensorrt"]
    device: str = Field(examples=["cpu"])
    default: bool = Field(description="used when a request names no model")
    window: int | None = Field(None, description="frames per window (video models)")
    precision: PrecisionInfo | None = None
    training: TrainingCard | None = None
    version: ModelVersionInfo | None = None
    classes: list[ClassInfo]


class ModelList(BaseModel):
    """GET /v1/models."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "models": [
                        {
                            "name": "ccnet-tiny",
                            "kind": "image",
                            "backend": "torch",
                            "device": "cpu",
                            "default": True,
                            "window": None,
                            "classes": [
                                {"id": 0, "name": "background", "color": [20, 20, 20]},
                                {"id": 1, "name": "stripes", "color": [230, 25, 75]},
                            ],
                        }
                    ]
                }
            ]
        }
    )

    models: list[ModelEntry]
    failures: list[LoadFailureInfo] = Field(
        default_factory=list, description="models-folder files that did not (re)load"
    )


class ReloadReportInfo(BaseModel):
    """What one poll of the models folder did."""

    loaded: list[str] = Field(description="models now serving a new version")
    unloaded: list[str] = Field(description="models whose file was removed")
    failed: list[str] = Field(description="files that failed to load (see failures)")
    pending: list[str] = Field(description="files still being written")


class ReloadResponse(BaseModel):
    """POST /v1/models/reload: what the poll did, then the models now served."""

    report: ReloadReportInfo
    models: list[ModelEntry]
    failures: list[LoadFailureInfo]


class RunLengthEncoding(BaseModel):
    """COCO RLE (compressed ``counts`` string, column-major), as pycocotools writes it."""

    size: list[int] = Field(description="[height, width]")
    counts: str


class ClassStat(BaseModel):
    """How much of the input one class covers."""

    id: int
    name: str
    color: list[int]
    pixels: int
    fraction: float = Field(ge=0, le=1)
    rle: RunLengthEncoding | None = Field(None, description="with rle=true")


class ImageSegmentation(BaseModel):
    """POST /v1/segment?output=json."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "ccnet-tiny",
                    "width": 512,
                    "height": 512,
                    "inference_ms": 98.4,
                    "classes": [
                        {
                            "id": 0,
                            "name": "background",
                            "color": [20, 20, 20],
                            "pixels": 143917,
                            "fraction": 0.549,
                        },
                        {
                            "id": 1,
                            "name": "stripes",
                            "color": [230, 25, 75],
                            "pixels": 118227,
                            "fraction": 0.451,
                            "rle": {"size": [512, 512], "counts": "Sj0e1k>..."},
                        },
                    ],
                    "mask_png": "iVBORw0KGgoAAAANSUhEUgAA...",
                }
            ]
        }
    )

    model: str
    width: int
    height: int
    inference_ms: float
    classes: list[ClassStat] = Field(description="classes present, by id; fractions sum to 1")
    mask_png: str = Field(description="base64 single-band PNG, pixel = class id, palette attached")


class FrameClassStat(BaseModel):
    """One class in one frame."""

    id: int
    pixels: int
    fraction: float


class FrameStats(BaseModel):
    """Per-frame statistics."""

    index: int
    classes: list[FrameClassStat]
    mask_png: str | None = Field(
        None, description="with masks=true: the frame's mask, a base64 PNG (pixel = class id)"
    )
    frame_jpeg: str | None = Field(
        None, description="with frames=true: the frame the model saw, a base64 JPEG"
    )


class ClipSegmentation(BaseModel):
    """POST /v1/segment/video?output=json."""

    model: str
    width: int
    height: int
    frame_count: int
    fps: float
    inference_ms: float
    window: int
    overlap: int
    classes: list[ClassStat] = Field(description="over the whole clip")
    frames: list[FrameStats]
