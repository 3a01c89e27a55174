"""The synthetic scene renderer behind ``ccnet synth``, the precision gate and int8 calibration.

Rendering only: ``training.synth`` writes the data set; the inference library renders the same
scenes again from a checkpoint's recorded generator, so no data set needs to be on disk.

Why this design. The demo models must learn something that needs a segmentation network, in
minutes on a CPU, and the clip data must make temporal context *necessary*, not just nice:

* Classes are textures, not colours. Every object gets two random colours and one of five
  patterns (stripes, checker, dots, grid, speckle) on a random shape (ellipse, rectangle,
  triangle, blob), rotated at random; the background is a smooth two-colour cloud. Colour and
  shape say nothing about the class, so a pixel is classified only from the pattern around it
  (context), and object boundaries come from where the pattern changes.
* Clips move the objects (1-3 px per frame, the texture moves with its object) over a static
  background, and corrupt 2-3 frames of every 8 (never two in a row): an *occlusion* (flat
  boxes over objects), *heavy noise* (contrast cut to a quarter under strong Gaussian noise) or
  *blur* (Gaussian, wider than every texture period). The masks always show the true scene, so
  on a corrupted frame the class of an object is only recoverable from its neighbours in time.
  ``SPLIT/CLIP/corruptions.json`` records which frames were corrupted and how.

Every sample draws from its own generator seeded by ``(seed, split, index)``, so the same seed
gives byte-identical files, and sample *i* does not depend on how many samples are generated.
Nothing is downloaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "CLASSES",
    "CORRUPTIONS",
    "GENERATOR_VERSION",
    "KINDS",
    "PALETTE",
    "SPLITS",
    "SynthKind",
    "render_clip",
    "render_scene",
    "sample_rng",
]

SynthKind = Literal["images", "clips"]

CLASSES: tuple[str, ...] = ("background", "stripes", "checker", "dots", "grid", "speckle")
PALETTE: tuple[tuple[int, int, int], ...] = (
    (20, 20, 20),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
)
CORRUPTIONS: tuple[str, ...] = ("occlusion", "noise", "blur")
GENERATOR_VERSION = 1
_SPLIT_CODES = {"train": 0, "val": 1}
SPLITS = tuple(_SPLIT_CODES)
_KIND_CODES = {"images": 0, "clips": 1}
KINDS = tuple(_KIND_CODES)
_SPECKLE_CELLS = 32  # a speckle texture is a random 32×32 grid of cells, tiled
_PATCH_PROBABILITY = 0.6  # objects with an untextured patch (flat mean colour) inside

Pattern = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- textures


def _soft(values: np.ndarray) -> np.ndarray:
    """Map a signed pattern to [0, 1] with a ~1 px soft edge (no aliasing staircase)."""
    return np.clip(0.5 + values, 0.0, 1.0)


def _pattern(kind: int, rng: np.random.Generator, scale: float) -> Pattern:
    """A function of texture coordinates (u, v) in pixels -> weight of the second colour."""
    if kind == 1:  # stripes
        period = rng.uniform(6.0, 10.0) * scale
        return lambda u, v: _soft(1.6 * np.sin(2 * np.pi * u / period))
    if kind == 2:  # checker
        period = rng.uniform(9.0, 13.0) * scale
        return lambda u, v: _soft(
            2.5 * np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)
        )
    if kind == 3:  # dots
        period = rng.uniform(7.0, 10.0) * scale
        radius = 0.28 * period

        def dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            du = (u / period) % 1.0 - 0.5
            dv = (v / period) % 1.0 - 0.5
            return _soft(radius - np.hypot(du, dv) * period)

        return dots
    if kind == 4:  # grid of thin lines
        period = rng.uniform(7.0, 10.0) * scale
        half_width = 1.0 * scale

        def grid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            du = np.abs(u / period - np.round(u / period)) * period
            dv = np.abs(v / period - np.round(v / period)) * period
            return _soft(half_width - np.minimum(du, dv))

        return grid
    if kind == 5:  # speckle: random cells, tiled
        cell = rng.uniform(2.0, 3.0) * scale
        cells = rng.integers(0, 2, (_SPECKLE_CELLS, _SPECKLE_CELLS)).astype(np.float32)

        def speckle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            iu = np.floor(u / cell).astype(np.int64) % _SPECKLE_CELLS
            iv = np.floor(v / cell).astype(np.int64) % _SPECKLE_CELLS
            return cells[iv, iu]

        return speckle
    raise ValueError(f"no texture for class {kind}")


def _two_colours(rng: np.random.Generator, min_contrast: float, max_contrast: float) -> np.ndarray:
    """Two random RGB colours whose luminance differs by min..max (so the pattern is visible)."""
    weights = np.array([0.299, 0.587, 0.114])
    while True:
        colours = rng.uniform(0, 255, (2, 3))
        contrast = abs(float((colours[0] - colours[1]) @ weights))
        if min_contrast <= contrast <= max_contrast:
            return colours.astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth two-colour cloud: two octaves of bicubically upsampled value noise."""
    field = np.zeros((size, size), np.float32)
    for cells, weight in ((4, 0.65), (9, 0.35)):
        coarse = rng.uniform(0, 255, (cells, cells)).astype(np.float32)
        image = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
        field += weight * np.asarray(image, np.float32) / 255.0
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    colours = _two_colours(rng, 25.0, 90.0)
    return colours[0] + field[..., None] * (colours[1] - colours[0])


# --------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class _Object:
    """One textured object: its class, shape, pose, motion and appearance."""

    kind: int
    shape: int  # 0 ellipse, 1 rectangle, 2 triangle, 3 blob
    center: tuple[float, float]  # (x, y) at frame 0
    velocity: tuple[float, float]  # pixels per frame
    angle: float
    radii: tuple[float, float]
    lobes: int
    phase: float
    pattern: Pattern
    colours: np.ndarray
    offset: tuple[float, float]  # texture phase
    patch: tuple[float, float, float, float] | None  # flat patch: centre and radii, local

    def local(self, xx: np.ndarray, yy: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates in the object's own rotated frame at time ``frame``."""
        cx = self.center[0] + self.velocity[0] * frame
        cy = self.center[1] + self.velocity[1] * frame
        dx, dy = xx - cx, yy - cy
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        return dx * cos + dy * sin, -dx * sin + dy * cos

    def footprint(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean mask of the shape in local coordinates."""
        a, b = self.radii
        if self.shape == 0:
            return (x / a) ** 2 + (y / b) ** 2 <= 1.0
        if self.shape == 1:
            return (np.abs(x) <= a) & (np.abs(y) <= b)
        if self.shape == 2:  # isosceles triangle pointing up in local coordinates
            return (y >= -b) & (y <= b * 0.6) & (np.abs(x) <= a * (b * 0.6 - y) / (1.6 * b))
        radius = np.hypot(x / a, y / b)
        theta = np.arctan2(y, x)
        return radius <= 1.0 + 0.25 * np.sin(self.lobes * theta + self.phase)

    def draw(
        self, canvas: np.ndarray, labels: np.ndarray, xx: np.ndarray, yy: np.ndarray, frame: int
    ) -> None:
        """Paint the object over ``canvas`` / ``labels`` (later objects occlude earlier ones)."""
        x, y = self.local(xx, yy, frame)
        inside = self.footprint(x, y)
        if not inside.any():
            return
        weight = self.pattern(x[inside] + self.offset[0], y[inside] + self.offset[1])
        if self.patch is not None:  # untextured: only the object around it tells the class
            px, py, ra, rb = self.patch
            flat = ((x[inside] - px) / ra) ** 2 + ((y[inside] - py) / rb) ** 2 <= 1.0
            weight = np.where(flat, 0.5, weight)
        colour = self.colours[0] + weight[:, None] * (self.colours[1] - self.colours[0])
        canvas[inside] = colour
        labels[inside] = self.kind


def _random_object(rng: np.random.Generator, size: int, max_speed: float) -> _Object:
    scale = size / 128.0
    kind = int(rng.integers(1, len(CLASSES)))
    speed = rng.uniform(1.0, max_speed) * scale if max_speed > 0 else 0.0
    heading = rng.uniform(0, 2 * np.pi)
    radii = (float(rng.uniform(15, 40) * scale), float(rng.uniform(15, 40) * scale))
    patch = None
    if rng.uniform() < _PATCH_PROBABILITY:
        offset = rng.uniform(-0.35, 0.35, 2) * radii
        extent = rng.uniform(0.35, 0.55, 2) * radii
        patch = (float(offset[0]), float(offset[1]), float(extent[0]), float(extent[1]))
    return _Object(
        kind=kind,
        shape=int(rng.integers(0, 4)),
        center=(float(rng.uniform(0.1, 0.9) * size), float(rng.uniform(0.1, 0.9) * size)),
        velocity=(float(speed * np.cos(heading)), float(speed * np.sin(heading))),
        angle=float(rng.uniform(0, np.pi)),
        radii=radii,
        lobes=int(rng.integers(3, 6)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        pattern=_pattern(kind, rng, scale),
        colours=_two_colours(rng, 70.0, 255.0),
        offset=(float(rng.uniform(0, 50)), float(rng.uniform(0, 50))),
        patch=patch,
    )


def _render(
    background: np.ndarray, objects: list[_Object], frame: int, noise: float, seed_rng
) -> tuple[np.ndarray, np.ndarray]:
    size = background.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    canvas = background.copy()
    labels = np.zeros((size, size), np.uint8)
    for obj in objects:
        obj.draw(canvas, labels, xx, yy, frame)
    canvas += seed_rng.normal(0.0, noise, canvas.shape).astype(np.float32)
    return canvas, labels


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(H, W, 3)`` uint8 RGB and ``(H, W)`` uint8 class ids (no ignore pixels).

    Args:
        rng: the only source of randomness (seed it per sample for reproducible data).
        size: side length in pixels; texture periods and object sizes scale with it.
    """
    background = _background(rng, size)
    objects = [_random_object(rng, size, 0.0) for _ in range(int(rng.integers(2, 5)))]
    canvas, labels = _render(background, objects, 0, float(rng.uniform(2, 8)), rng)
    return _to_uint8(canvas), labels


# --------------------------------------------------------------------------- clips


def _corrupted_frames(rng: np.random.Generator, frames: int) -> list[int]:
    """2-3 frames (fewer in short clips), never two adjacent ones, never every frame."""
    if frames < 2:
        return []
    wanted = min(int(rng.integers(2, 4)), (frames + 1) // 2, frames - 1)
    while True:
        chosen = sorted(rng.choice(frames, size=wanted, replace=False).tolist())
        if all(b - a > 1 for a, b in itertools.pairwise(chosen)):
            return chosen


def _corrupt(
    canvas: np.ndarray,
    kind: str,
    objects: list[_Object],
    frame: int,
    rng: np.random.Generator,
) -> np.ndarray:
    size = canvas.shape[0]
    if kind == "blur":
        # sigma 3-4.5 px attenuates even the coarsest texture period (13 px) below 1 %
        radius = rng.uniform(3.0, 4.5) * size / 128.0
        image = Image.fromarray(_to_uint8(canvas)).filter(ImageFilter.GaussianBlur(radius))
        return np.asarray(image, np.float32).copy()
    if kind == "noise":
        mean = canvas.mean(axis=(0, 1), keepdims=True)
        return mean + 0.25 * (canvas - mean) + rng.normal(0, 60, canvas.shape).astype(np.float32)
    # occlusion: flat boxes centred near visible objects, so what they hide is an object
    out = canvas.copy()
    for _ in range(int(rng.integers(1, 3))):
        obj = objects[int(rng.integers(0, len(objects)))]
        cx = obj.center[0] + obj.velocity[0] * frame + rng.uniform(-8, 8)
        cy = obj.center[1] + obj.velocity[1] * frame + rng.uniform(-8, 8)
        half_w, half_h = rng.uniform(0.17, 0.28, 2) * size
        x0, x1 = int(max(cx - half_w, 0)), int(min(cx + half_w, size))
        y0, y1 = int(max(cy - half_h, 0)), int(min(cy + half_h, size))
        grey = rng.uniform(40, 215)
        out[y0:y1, x0:x1] = grey + rng.normal(0, 3, (max(y1 - y0, 0), max(x1 - x0, 0), 1))
    return out


def render_clip(
    rng: np.random.Generator,
    size: int = 128,
    frames: int = 8,
    corruptions: tuple[str, ...] = CORRUPTIONS,
) -> tuple[list[np.ndarray], list[np.ndarray], dict[int, str]]:
    """A clip of moving textured objects with some frames corrupted.

    Args:
        rng: the only source of randomness.
        size: side length in pixels.
        frames: frames in the clip.
        corruptions: the kinds drawn from (a subset of ``CORRUPTIONS``), so a training split can
            hold a kind out and the validation split test whether a model borrows from its
            neighbours rather than recognising a corruption it was taught. The full tuple draws
            exactly as before, so existing data sets are reproduced byte for byte.

    Returns:
        ``(images, masks, corruptions)``: ``frames`` RGB uint8 images, their true class-id
        masks (the uncorrupted scene), and ``{frame index: corruption kind}``.
    """
    unknown = sorted(set(corruptions) - set(CORRUPTIONS))
    if unknown or not corruptions:
        raise ValueError(f"corruptions must be a non-empty subset of {CORRUPTIONS}, got {unknown}")
    background = _background(rng, size)
    objects = [_random_object(rng, size, 3.0) for _ in range(int(rng.integers(2, 5)))]
    noise = float(rng.uniform(2, 8))
    corrupted = {
        i: corruptions[int(rng.integers(0, len(corruptions)))]
        for i in _corrupted_frames(rng, frames)
    }
    images, masks = [], []
    for frame in range(frames):
        canvas, labels = _render(background, objects, frame, noise, rng)
        if frame in corrupted:
            canvas = _corrupt(canvas, corrupted[frame], objects, frame, rng)
        images.append(_to_uint8(canvas))
        masks.append(labels)
    return images, masks, corrupted


def sample_rng(seed: int, kind: SynthKind, split: str, index: int) -> np.random.Generator:
    """Sample ``index``'s own generator: the same seed gives byte-identical samples, and sample
    *i* does not depend on how many are generated."""
    return np.random.default_rng([seed, _KIND_CODES[kind], _SPLIT_CODES[split], index])
