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
    "ErrorBody",
    "ErrorResponse",
    "FrameClassStat",
    "FrameStats",
    "Health",
    "ImageSegmentation",
    "ModelEntry",
    "ModelList",
    "RunLengthEncoding",
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


class ModelEntry(BaseModel):
    """A loaded model."""

    name: str = Field(examples=["ccnet-tiny"])
    kind: Literal["image", "video"]
    backend: Literal["torch", "onnxruntime", "tensorrt"]
    device: str = Field(examples=["cpu"])
    default: bool = Field(description="used when a request names no model")
    window: int | None = Field(None, description="frames per window (video models)")
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
