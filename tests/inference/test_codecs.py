"""Image decoding (defensive), mask PNG encoding and overlays."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ccnet.inference.codecs import (
    ImageDecodeError,
    ImageTooLargeError,
    blend_overlay,
    decode_image,
    encode_mask_png,
    read_image,
)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rgb(height: int = 5, width: int = 7) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_rgb_png_round_trip() -> None:
    rgb = _rgb()
    np.testing.assert_array_equal(decode_image(_png(Image.fromarray(rgb))), rgb)


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = _rgb()[:, :, 0]
    out = decode_image(_png(Image.fromarray(gray)))
    assert out.shape == (5, 7, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 10, 10, 255)  # opaque red stays
    rgba[1, 1] = (0, 0, 0, 0)  # transparent black becomes white
    out = decode_image(_png(Image.fromarray(rgba)))
    assert tuple(out[0, 0]) == (200, 10, 10)
    assert tuple(out[1, 1]) == (255, 255, 255)


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 1000], [30000, 60000]], dtype=np.uint16)
    out = decode_image(_png(Image.fromarray(values)))
    assert out[1, 1, 0] == 255
    assert 0 < out[1, 0, 0] < 255


def test_palette_image_decodes_to_its_colours() -> None:
    image = Image.new("P", (3, 2))
    image.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    image.putpixel((1, 1), 1)
    out = decode_image(_png(image))
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[1, 1]) == (40, 50, 60)


def test_exif_orientation_is_applied() -> None:
    image = Image.fromarray(_rgb(4, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_image(buffer.getvalue()).shape == (10, 4, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "zero bytes"),
        (b"hello, this is plain text", "not a decodable image"),
    ],
    ids=["empty", "text"],
)
def test_undecodable_input(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_truncated_png_is_rejected() -> None:
    data = _png(Image.fromarray(_rgb(64, 64)))
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb's signature)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: (  # noqa: E731
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pixel_limit_checked_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match="more pixels than the limit"):
        decode_image(_png_declaring(40000, 40000))
    with pytest.raises(ImageTooLargeError, match="9000×9000"):
        decode_image(_png_declaring(9000, 9000), max_pixels=1000)
    with pytest.raises(ImageTooLargeError):
        decode_image(_png(Image.fromarray(_rgb(10, 10))), max_pixels=99)


def test_read_image_names_the_file(tmp_path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError, match=r"broken\.png"):
        read_image(bad)
    with pytest.raises(ImageDecodeError, match=r"missing\.png: cannot read"):
        read_image(tmp_path / "missing.png")


def test_mask_png_keeps_ids_and_palette() -> None:
    mask = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    palette = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    image = Image.open(io.BytesIO(encode_mask_png(mask, palette)))
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), mask)
    assert image.getpalette()[:9] == [255, 0, 0, 0, 255, 0, 0, 0, 255]


def test_mask_png_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        encode_mask_png(np.zeros((2, 2, 3), dtype=np.uint8), [[0, 0, 0]])
    with pytest.raises(ValueError, match="256"):
        encode_mask_png(np.zeros((2, 2), dtype=np.uint8), [[0, 0, 0]] * 300)


def test_overlay_blends_at_alpha() -> None:
    rgb = np.full((2, 2, 3), 100, dtype=np.uint8)
    mask = np.array([[0, 1], [1, 0]])
    palette = [[0, 0, 0], [200, 200, 200]]
    np.testing.assert_array_equal(blend_overlay(rgb, mask, palette, 0.0), rgb)
    full = blend_overlay(rgb, mask, palette, 1.0)
    assert tuple(full[0, 1]) == (200, 200, 200)
    assert tuple(blend_overlay(rgb, mask, palette, 0.5)[0, 1]) == (150, 150, 150)
    with pytest.raises(ValueError, match="alpha"):
        blend_overlay(rgb, mask, palette, 1.5)


# ------------------------------------------------------------------- JPEG draft decoding


def _jpeg(rgb: np.ndarray, exif: Image.Exif | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92, exif=exif or Image.Exif())
    return buffer.getvalue()


def _photo(width: int, height: int) -> np.ndarray:
    import skimage.data

    image = Image.fromarray(skimage.data.astronaut()).resize((width, height))
    return np.asarray(image)


def test_draft_decodes_a_large_jpeg_at_a_reduced_scale_close_to_the_full_decode() -> None:
    data = _jpeg(_photo(2048, 1536))
    full = decode_image(data)
    small = decode_image(data, downscale_to=500)
    # 2048 / 4 = 512 >= 500: a quarter of each side, never below 7/8 of what was asked
    assert small.shape == (384, 512, 3)
    reference = np.asarray(Image.fromarray(full).resize((512, 384), Image.Resampling.BOX))
    error = np.abs(small.astype(np.int16) - reference.astype(np.int16)).mean()
    assert error < 2.0, f"draft decode differs from a full decode by {error:.2f} levels"


def test_draft_allows_at_most_an_eighth_below_the_requested_side() -> None:
    data = _jpeg(_photo(4032, 3024))  # a 12 MP phone photo
    assert decode_image(data, downscale_to=1024).shape == (756, 1008, 3)  # 1/4, 1008 >= 896
    assert decode_image(data, downscale_to=1200).shape == (1512, 2016, 3)  # 1/4 too small


def test_draft_keeps_small_images_and_other_formats_whole() -> None:
    photo = _photo(640, 480)
    assert decode_image(_jpeg(photo), downscale_to=1024).shape == (480, 640, 3)
    assert decode_image(_png(Image.fromarray(photo)), downscale_to=100).shape == (480, 640, 3)


def test_draft_decoding_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    rotated = decode_image(_jpeg(_photo(1600, 800), exif), downscale_to=200)
    assert rotated.shape == (200, 100, 3)  # 1/8 scale, then turned upright


# --------------------------------------------------------------------------- COCO RLE


def _rle_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    fragmented = rng.random((97, 203)) < 0.5
    blocks = np.zeros((64, 48), dtype=bool)
    blocks[5:40, 7:30] = True
    return [
        fragmented,
        blocks,
        np.ones((3, 4), dtype=bool),  # starts with a one: an empty first run of zeros
        np.zeros((3, 4), dtype=bool),
        np.zeros((0, 5), dtype=bool),
        rng.random((1, 300)) < 0.02,  # long runs: multi-group deltas, negative too
    ]


def test_fast_rle_is_identical_to_the_pure_encoder() -> None:
    from ccnet.inference.rle import encode_rle, encode_rle_reference, has_pycocotools

    if not has_pycocotools:
        pytest.skip("pycocotools is not installed: encode_rle is the pure version")
    for index, mask in enumerate(_rle_masks()):
        assert encode_rle(mask) == encode_rle_reference(mask), f"mask {index} {mask.shape}"


def test_pure_rle_round_trips_and_pycocotools_reads_it() -> None:
    from ccnet.inference.rle import decode_rle, encode_rle_reference

    coco = pytest.importorskip("pycocotools.mask")
    for index, mask in enumerate(_rle_masks()):
        rle = encode_rle_reference(mask)
        np.testing.assert_array_equal(decode_rle(rle), mask, err_msg=f"mask {index}")
        if mask.size:
            coded = {"size": rle["size"], "counts": str(rle["counts"]).encode()}
            np.testing.assert_array_equal(coco.decode(coded).astype(bool), mask)
