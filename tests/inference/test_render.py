"""The render layer (service.outputs) and overlay composition (service.overlay)."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image

from ccnet.inference.backends.base import ModelInfo
from ccnet.inference.overlay import blend_overlay, compose_overlay
from ccnet.inference.render import (
    CLIP_OUTPUTS,
    IMAGE_OUTPUTS,
    RenderOptions,
    render_clip,
    render_image,
)
from ccnet.inference.segmenter import ClipSegmentation

INFO = ModelInfo(
    name="toy",
    kind="image",
    classes=["sky", "road", "tree"],
    palette=[[0, 0, 255], [128, 128, 128], [0, 200, 0]],
)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[30:] = 1
    mask[:, 60:] = 2
    return rgb, mask


def _reference_blend(rgb: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    colours = np.asarray(INFO.palette, dtype=np.float64)[mask]
    return np.clip(rgb * (1 - alpha) + colours * alpha + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_blend_matches_a_float64_reference(scene, alpha) -> None:
    rgb, mask = scene
    ours = blend_overlay(rgb, mask, INFO.palette, alpha).astype(int)
    assert np.abs(ours - _reference_blend(rgb, mask, alpha)).max() <= 1, alpha


def test_blend_of_a_clip_blends_every_frame(scene) -> None:
    rgb, mask = scene
    frames, masks = np.stack([rgb, rgb[::-1]]), np.stack([mask, mask[::-1]])
    clip = blend_overlay(frames, masks, INFO.palette, 0.5)
    np.testing.assert_array_equal(clip[1], blend_overlay(rgb[::-1], mask[::-1], INFO.palette, 0.5))


def test_overlay_memory_stays_near_the_output_size() -> None:
    """A 12 MP overlay allocates its uint8 result and small blocks, not full-size floats (the
    old composition held three float32 copies: 36 bytes per pixel)."""
    rgb = np.zeros((3000, 4000, 3), dtype=np.uint8)
    mask = np.zeros((3000, 4000), dtype=np.uint8)
    tracemalloc.start()
    try:
        blend_overlay(rgb, mask, INFO.palette, 0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < rgb.nbytes + (24 << 20), f"peak {peak / 2**20:.0f} MiB"


def test_legend_lists_the_classes_in_the_corner(scene) -> None:
    rgb, mask = scene
    rgb = np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)  # 240×320: room for the legend
    mask = np.repeat(np.repeat(mask, 4, axis=0), 4, axis=1)
    plain = compose_overlay(rgb, mask, INFO.palette, INFO.classes)
    legend = compose_overlay(rgb, mask, INFO.palette, INFO.classes, legend=True)
    changed = np.argwhere((plain != legend).any(axis=2))
    assert len(changed) > 0
    top, left = changed.min(axis=0)
    bottom, right = changed.max(axis=0)
    assert top == 0 and left == 0 and bottom < 120 and right < 200  # a corner box only
    # one swatch per class present, in its colour
    corner = legend[:bottom, :right].reshape(-1, 3).astype(int)
    for colour in INFO.palette:
        assert (np.abs(corner - colour).sum(axis=1) < 40).any(), colour


def test_every_image_output_renders(scene) -> None:
    rgb, mask = scene
    for output in IMAGE_OUTPUTS:
        rendered = render_image(output, rgb, mask, INFO, 1.5, RenderOptions(rle=True))
        assert rendered.body, output
        if rendered.media_type == "application/json":
            body = json.loads(rendered.body)
            assert {c["name"] for c in body["classes"]} == {"sky", "road", "tree"}
            assert all("rle" in c for c in body["classes"])
        else:
            image = Image.open(io.BytesIO(rendered.body))
            assert image.size == (80, 60), output
    jpeg = render_image("overlay", rgb, mask, INFO, 1.0, RenderOptions(image_format="jpeg"))
    assert jpeg.media_type == "image/jpeg" and jpeg.suffix == "_overlay.jpg"
    with pytest.raises(ValueError, match="image output"):
        render_image("tiff", rgb, mask, INFO, 1.0)


def test_every_clip_output_renders(scene) -> None:
    rgb, mask = scene
    frames, masks = np.stack([rgb] * 3), np.stack([mask] * 3)
    result = ClipSegmentation(masks, 2.0, window=4, overlap=2)
    for output in CLIP_OUTPUTS:
        rendered = render_clip(output, frames, 10.0, result, INFO, RenderOptions(legend=True))
        assert rendered.body, output
    archive = zipfile.ZipFile(io.BytesIO(render_clip("zip", frames, 10.0, result, INFO).body))
    assert sorted(archive.namelist()) == ["clip.json"] + [f"frame_{i:05d}.png" for i in range(3)]
    gif = render_clip("overlay", frames, 10.0, result, INFO, RenderOptions(clip_format="gif"))
    assert gif.media_type == "image/gif" and gif.suffix == "_overlay.gif"


def test_routes_offer_exactly_the_render_layers_outputs() -> None:
    """One table of output kinds: the routes' `output=` choices come from it."""
    from ccnet.service.main import create_app

    schema = create_app().openapi()

    def choices(path: str) -> set[str]:
        parameters = schema["paths"][path]["post"]["parameters"]
        (output,) = [p for p in parameters if p["name"] == "output"]
        return set(output["schema"]["enum"])

    assert choices("/v1/segment") == set(IMAGE_OUTPUTS)
    assert choices("/v1/segment/video") == set(CLIP_OUTPUTS)


def test_overlay_legend_on_the_route() -> None:
    """`legend=true` draws the legend on /v1/segment overlays (and only then)."""
    import skimage.data

    from tests.service.conftest import make_client, png_bytes

    body = png_bytes(np.asarray(skimage.data.coffee()))
    with make_client() as client:
        overlays = [
            np.asarray(
                Image.open(
                    io.BytesIO(
                        client.post(
                            f"/v1/segment?output=overlay&legend={flag}",
                            files={"image": ("coffee.png", body, "image/png")},
                        ).content
                    )
                )
            )
            for flag in ("false", "true")
        ]
    differs = (overlays[0] != overlays[1]).any(axis=2)
    assert differs[:40, :40].mean() > 0.9 and not differs[200:, 200:].any()
