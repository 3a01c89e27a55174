"""The Python API: from a model file to masks in two lines, with the service's own pipeline.

    from ccnet import Segmenter
    seg = Segmenter.from_file("model.pt")  # or .onnx / .engine: the backend follows the file
    result = seg("photo.jpg")               # a path, a PIL image or an (H, W, 3) uint8 array
    result.mask                             # (H, W) uint8 class ids at the input's size

``ClipSegmenter`` is the counterpart for CCNet3D clips. The HTTP service and ``ccnet predict``
run these same steps (``prepare`` → a backend's forward pass → ``finish``), so a file gives
the same mask here, from ``ccnet predict`` and from ``POST /v1/segment``.

Input conventions: RGB, 8 bits per channel (values 0..255). Normalisation (mean/std, channel
order) is the model's and is applied inside: never normalise before calling. Images whose
long side exceeds ``max_side`` are scaled down for inference, every input is padded by edge
replication to a multiple of the network stride (8), and the mask is mapped back to the
input's size (nearest neighbour, so ids stay ids).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from ccnet.inference.backends.base import InferenceBackend, ModelInfo
from ccnet.inference.options import DEFAULT_CLIP_WINDOW, LoadOptions
from ccnet.inference.pipeline import (
    PreparedImage,
    class_statistics,
    labels_from_logits,
    labels_to_size,
    prepare_image,
    probabilities_from_logits,
    scale_frames,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    from PIL import Image

    from ccnet.inference.video import DecodedVideo

    ImageLike: TypeAlias = str | os.PathLike[str] | Image.Image | np.ndarray
    ClipLike: TypeAlias = str | os.PathLike[str] | np.ndarray | Sequence[np.ndarray]

__all__ = [
    "ClipSegmentation",
    "ClipSegmenter",
    "Segmentation",
    "Segmenter",
    "as_rgb",
    "read_clip",
]
_CLIP_MAX_FRAMES = 100_000  # files on the caller's own disk: limits guard memory, not abuse
_CLIP_MAX_PIXELS = 1 << 26


def as_rgb(image: ImageLike) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a path, a PIL image or an array.

    Paths and PIL images are decoded as the service decodes uploads (EXIF orientation, every
    mode to 8-bit RGB, transparency on white). Arrays must be uint8 0..255: (H, W, 3) RGB,
    (H, W) grayscale or (H, W, 4) RGBA (composited on white).

    Raises:
        ValueError: an unreadable file, or an array of another dtype or shape.
    """
    from PIL import Image

    from ccnet.inference.codecs import pil_to_rgb, read_image

    if isinstance(image, str | os.PathLike):
        return read_image(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 RGB values 0..255, got dtype {array.dtype}; for floats in 0..1 "
            "pass (x * 255).round().astype(np.uint8); do not normalise, the model does"
        )
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 4:
        return pil_to_rgb(Image.fromarray(array, "RGBA"))
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    raise ValueError(f"expected an (H, W, 3) RGB image, got shape {array.shape}")


@dataclass(frozen=True)
class Segmentation:
    """One image's result, at the input's size."""

    mask: np.ndarray  # (H, W) uint8 class ids
    classes: list[str]
    palette: list[list[int]]
    inference_ms: float
    probabilities: np.ndarray | None = None  # (K, H, W) float32, with probabilities=True
    overlay: np.ndarray | None = None  # (H, W, 3) uint8, with overlay=True

    def class_fractions(self) -> dict[str, float]:
        """Fraction of the image covered by each class present."""
        stats = class_statistics(self.mask, self.classes)
        return {str(s["name"]): float(s["fraction"]) for s in stats}  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClipSegmentation:
    """Masks for every frame of a clip and how they were made."""

    masks: np.ndarray  # (T, H, W) uint8 class ids
    inference_ms: float
    window: int
    overlap: int
    overlay: np.ndarray | None = None  # (T, H, W, 3) uint8, with overlay=True

    def class_fractions(self, classes: Sequence[str]) -> dict[str, float]:
        """Fraction of all frames' pixels covered by each class present."""
        stats = class_statistics(self.masks, list(classes))
        return {str(s["name"]): float(s["fraction"]) for s in stats}  # type: ignore[arg-type]


def _open(
    path: str | os.PathLike[str], options: LoadOptions | None, name: str | None, **fields: Any
) -> InferenceBackend:
    """``from_file``'s load: ``options`` with the keyword arguments' fields, through the facade
    (which prepares an export first where the backend needs one)."""
    from ccnet.inference.facade import open_backend

    return open_backend(path, (options or LoadOptions()).replace(**fields), name=name)


class _Base:
    """What both segmenters share: the backend, its model description and cleanup."""

    kind = "image"

    def __init__(self, backend: InferenceBackend) -> None:
        if backend.info.kind != self.kind:
            other = "ClipSegmenter" if backend.info.kind == "video" else "Segmenter"
            backend.close()
            raise ValueError(
                f"{backend.info.source or backend.info.name}: a {backend.info.kind} model; "
                f"use {other}"
            )
        self.backend = backend

    @property
    def info(self) -> ModelInfo:
        """Name, kind, class names and palette of the model."""
        return self.backend.info

    @property
    def classes(self) -> list[str]:
        return self.backend.info.classes

    @property
    def palette(self) -> list[list[int]]:
        return self.backend.info.palette

    def close(self) -> None:
        """Release the backend (sessions, GPU memory)."""
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Segmenter(_Base):
    """Segment images with a CCNet model.

    Args:
        backend: an inference backend for an image model (see ``from_file``).
        max_side: images whose long side exceeds this are scaled down for inference (the
            service's ``max_side``; the mask is still at the input's size).
    """

    def __init__(self, backend: InferenceBackend, *, max_side: int = 1024) -> None:
        super().__init__(backend)
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        self.max_side = max_side

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        backend: str | None = None,
        device: str = "auto",
        max_side: int = 1024,
        name: str | None = None,
        precision: str = "auto",
        options: LoadOptions | None = None,
    ) -> Segmenter:
        """Load a checkpoint (``.pt``), ONNX export (``.onnx``) or TensorRT engine.

        Only the file and these arguments decide; nothing is read from the environment.

        Args:
            path: the model file, or a bundled demo name (``"ccnet-tiny"``).
            backend: "torch", "onnxruntime" or "tensorrt"; by default the file's own (a
                checkpoint on torch, ``.onnx`` on onnxruntime, an engine on tensorrt).
            device: "auto", "cpu" or "cuda".
            max_side: see the class.
            name: the model's name in results (default: its own).
            precision: "auto" (the fastest path that passes the parity gate here), "fp32"
                (results that do not depend on the machine), "bf16", "int8" or "fp16".
            options: every other loading option (threads, cache folder, TensorRT plugin);
                ``backend``, ``device`` and ``precision`` above override its fields.

        Raises:
            FileNotFoundError: no such file, and not a bundled name.
            ValueError: the file cannot be loaded, or it holds a clip (CCNet3D) model.
        """
        fields = {"backend": backend, "device": device, "precision": precision}
        loaded = _open(path, options, name, **fields, max_side=max(8, max_side))
        return cls(loaded, max_side=max_side)

    @classmethod
    def from_model(
        cls, model: Any, meta: dict[str, Any] | None = None, *, max_side: int = 1024
    ) -> Segmenter:
        """Wrap an in-memory CCNet (``meta`` as saved with checkpoints; defaults filled)."""
        from ccnet.inference.backends.base import info_from_meta
        from ccnet.inference.backends.torch_backend import TorchBackend
        from ccnet.model.checkpoint import complete_meta

        meta = complete_meta(model, meta)
        name = meta["config"].get("name") or type(model).__name__
        info = info_from_meta(None, meta, Path(name))
        return cls(TorchBackend(info, model, meta, device="cpu"), max_side=max_side)

    def prepare(
        self, image: ImageLike, *, size: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, PreparedImage]:
        """The RGB image and its network input (scaled, padded, float32 0..255).

        Args:
            size: the (H, W) of the original image when ``image`` was decoded smaller (JPEG
                draft mode); the mask is then at that size.
        """
        rgb = as_rgb(image)
        return rgb, prepare_image(rgb, self.max_side, size)

    def finish(
        self,
        rgb: np.ndarray,
        prepared: PreparedImage,
        logits: np.ndarray,
        inference_ms: float,
        *,
        probabilities: bool = False,
        overlay: bool = False,
        alpha: float = 0.5,
        legend: bool = False,
    ) -> Segmentation:
        """The result from one image's (K, Hp, Wp) logits (the service batches in between)."""
        from ccnet.inference.overlay import compose_overlay

        mask = labels_from_logits(logits, prepared.scaled, prepared.size)
        info = self.info
        return Segmentation(
            mask=mask,
            classes=info.classes,
            palette=info.palette,
            inference_ms=inference_ms,
            probabilities=(
                probabilities_from_logits(logits, prepared.scaled, prepared.size)
                if probabilities
                else None
            ),
            overlay=(
                compose_overlay(rgb, mask, info.palette, info.classes, alpha=alpha, legend=legend)
                if overlay
                else None
            ),
        )

    def __call__(
        self,
        image: ImageLike,
        *,
        probabilities: bool = False,
        overlay: bool = False,
        alpha: float = 0.5,
        legend: bool = False,
    ) -> Segmentation:
        """Segment one image (a path, a PIL image or an RGB uint8 array).

        Args:
            image: see ``as_rgb``.
            probabilities: also return per-class probabilities at the input's size.
            overlay: also return the image with class colours blended in.
            alpha: the colours' opacity in the overlay.
            legend: draw a legend of the classes present on the overlay.
        """
        rgb, prepared = self.prepare(image)
        began = time.perf_counter()
        logits = self.backend.infer(prepared.pixels[None])[0]
        elapsed = (time.perf_counter() - began) * 1e3
        return self.finish(
            rgb,
            prepared,
            logits,
            elapsed,
            probabilities=probabilities,
            overlay=overlay,
            alpha=alpha,
            legend=legend,
        )


class ClipSegmenter(_Base):
    """Segment clips with a CCNet3D model, in overlapping windows of its clip length.

    Args:
        backend: an inference backend for a video model.
        max_side: frames whose long side exceeds this are scaled down for inference.
        overlap: frames shared by neighbouring windows (default: half a window).
    """

    kind = "video"

    def __init__(
        self, backend: InferenceBackend, *, max_side: int = 512, overlap: int | None = None
    ) -> None:
        super().__init__(backend)
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        self.max_side = max_side
        self.window = backend.info.window or DEFAULT_CLIP_WINDOW
        self.overlap = self.window // 2 if overlap is None else min(overlap, self.window - 1)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        backend: str | None = None,
        device: str = "auto",
        max_side: int = 512,
        overlap: int | None = None,
        name: str | None = None,
        precision: str = "auto",
        options: LoadOptions | None = None,
    ) -> ClipSegmenter:
        """Load a CCNet3D checkpoint, ONNX export or engine, or ``"ccnet3d-tiny"`` (see
        ``Segmenter.from_file``)."""
        fields = {"backend": backend, "device": device, "precision": precision}
        loaded = _open(path, options, name, **fields, max_video_side=max(8, max_side))
        return cls(loaded, max_side=max_side, overlap=overlap)

    def segment(
        self, frames: np.ndarray, *, before_window: Callable[[], None] | None = None
    ) -> ClipSegmentation:
        """Masks for (T, H, W, 3) uint8 frames.

        Args:
            frames: the clip, RGB 0..255.
            before_window: called before each window's forward pass; whatever it raises
                stops the clip there (the service passes its request deadline's check).

        Neighbouring windows share ``overlap`` frames and their per-frame probabilities are
        blended, so a frame's label draws on context from both sides and window edges do not
        flicker. Memory stays bounded by the window: frames are kept as scaled uint8 and
        converted per window, and a frame's label is decided once the last window covering
        it has run.
        """
        from ccnet.inference import clips

        small, size, scaled = scale_frames(frames, self.max_side)  # (T, Hp, Wp, 3) uint8

        def infer(start: int, stop: int) -> np.ndarray:
            if before_window is not None:
                before_window()
            pixels = small[start:stop].transpose(3, 0, 1, 2).astype(np.float32)  # (3, t, Hp, Wp)
            return self.backend.infer(pixels[None])[0]

        began = time.perf_counter()
        windows = clips.plan_windows(len(small), self.window, self.overlap)
        labels = clips.stitch_labels(len(small), windows, infer)
        elapsed = (time.perf_counter() - began) * 1e3
        labels = labels_to_size(labels, scaled, size)
        return ClipSegmentation(np.ascontiguousarray(labels), elapsed, self.window, self.overlap)

    def __call__(
        self, clip: ClipLike, *, overlay: bool = False, alpha: float = 0.5, legend: bool = False
    ) -> ClipSegmentation:
        """Segment a clip: a file (mp4, webm, mov, animated GIF, …) or (T, H, W, 3) uint8
        frames (a sequence of RGB frames is stacked)."""
        from ccnet.inference.overlay import compose_overlay

        is_file = isinstance(clip, str | os.PathLike)
        frames = read_clip(clip).frames if is_file else _frames(clip)  # type: ignore[arg-type]
        result = self.segment(frames)
        if not overlay:
            return result
        info = self.info
        composed = compose_overlay(
            frames, result.masks, info.palette, info.classes, alpha=alpha, legend=legend
        )
        return ClipSegmentation(
            result.masks, result.inference_ms, result.window, result.overlap, composed
        )


def _frames(clip: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    frames = np.asarray(clip) if isinstance(clip, np.ndarray) else np.stack(list(clip))
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    return frames


def read_clip(path: str | os.PathLike[str]) -> DecodedVideo:
    """Decode a clip file (frames as (T, H, W, 3) uint8 and the frame rate); errors name the
    file."""
    from ccnet.inference.video import VideoDecodeError, VideoTooLargeError, decode_video

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise VideoDecodeError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return decode_video(data, max_frames=_CLIP_MAX_FRAMES, max_pixels=_CLIP_MAX_PIXELS)
    except (VideoDecodeError, VideoTooLargeError) as error:
        raise type(error)(f"{path}: {error}") from None
