"""Video decoding (defensive), overlay video encoding and mask zips."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
import skimage.data
from PIL import Image

import ccnet.inference.video
from ccnet.inference.render import encode_mask_zip
from ccnet.inference.video import (
    MEDIA_TYPES,
    VideoDecodeError,
    VideoTooLargeError,
    decode_video,
    encode_overlay_video,
)

BACKGROUND = (40, 40, 40)
RED = (255, 0, 0)
BLUE = (0, 0, 255)
LIMITS = {"max_frames": 100, "max_pixels": 1_000_000}
MP4 = "mov,mp4,m4a,3gp,3g2,mj2"


def _moving_frames(count: int = 8, height: int = 48, width: int = 64) -> np.ndarray:
    """A red square moving right and a blue one moving left, on grey: every frame differs."""
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for t in range(count):
        frames[t] = BACKGROUND
        frames[t, 8:24, 4 + 4 * t : 20 + 4 * t] = RED
        frames[t, 28:44, 40 - 3 * t : 56 - 3 * t] = BLUE
    return frames


def _clip(
    container_format: str,
    codec: str,
    frames: np.ndarray | None = None,
    *,
    pix_fmt: str = "yuv420p",
    fps: int = 10,
) -> bytes:
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV's FFmpeg has no {codec} encoder")
    frames = _moving_frames() if frames is None else frames
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _declared_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return container.streams.video[0].frames


def _pil_gif(frames: np.ndarray, **params: object) -> bytes:
    images = [Image.fromarray(rgb) for rgb in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], **params)
    return buffer.getvalue()


def _png(rgb: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=format)
    return buffer.getvalue()


@pytest.fixture
def converted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts frames converted to RGB, i.e. decoded and kept."""
    calls: list[int] = []
    real = ccnet.inference.video._to_rgb

    def counting(frame: av.VideoFrame) -> np.ndarray:
        calls.append(frame.pts or 0)
        return real(frame)

    monkeypatch.setattr(ccnet.inference.video, "_to_rgb", counting)
    return calls


def _assert_colours_close(decoded: np.ndarray, expected: np.ndarray, case: str) -> None:
    # lossy codecs blur the square edges, so compare the square centres and the background
    for t in range(len(expected)):
        for y, x in ((16, 12 + 4 * t), (36, 48 - 3 * t), (2, 2)):
            error = np.abs(decoded[t, y, x].astype(int) - expected[t, y, x]).max()
            assert error <= 40, f"{case}: frame {t} pixel ({y}, {x}) off by {error}"


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_mp4_round_trip(codec: str) -> None:
    frames = _moving_frames()
    video = decode_video(_clip("mp4", codec, frames), **LIMITS)
    assert video.frames.shape == (8, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(10.0)
    assert video.container == MP4
    _assert_colours_close(video.frames, frames, codec)
    assert not np.array_equal(video.frames[0], video.frames[-1]), "frames should differ"


@pytest.mark.parametrize(
    ("container_format", "codec", "pix_fmt", "demuxer"),
    [
        ("webm", "libvpx", "yuv420p", "matroska,webm"),
        ("webm", "libvpx-vp9", "yuv420p", "matroska,webm"),
        ("avi", "mpeg4", "yuv420p", "avi"),
        ("avi", "mjpeg", "yuvj420p", "avi"),
        ("mov", "libx264", "yuv420p", MP4),
        ("matroska", "libx264", "yuv420p", "matroska,webm"),
        ("gif", "gif", "rgb8", "gif"),
    ],
)
def test_containers_decode(container_format: str, codec: str, pix_fmt: str, demuxer: str) -> None:
    frames = _moving_frames()
    video = decode_video(_clip(container_format, codec, frames, pix_fmt=pix_fmt), **LIMITS)
    case = f"{container_format}/{codec}"
    assert video.frames.shape == (8, 48, 64, 3), case
    assert video.container == demuxer, case
    assert video.fps == pytest.approx(10.0), case
    _assert_colours_close(video.frames, frames, case)


def test_scikit_image_animated_gif() -> None:
    path = Path(skimage.data.__file__).parent / "no_time_for_that_tiny.gif"
    video = decode_video(path.read_bytes(), **LIMITS)
    with Image.open(path) as image:
        expected_frames, (width, height) = image.n_frames, image.size
        image.seek(1)
        second = np.asarray(image.convert("RGB"))
    assert video.frames.shape == (expected_frames, height, width, 3)
    assert expected_frames > 1
    assert video.fps == pytest.approx(100 / 7)  # every frame is delayed 7 centiseconds
    np.testing.assert_allclose(video.frames[1], second, atol=2)


def test_gif_rate_comes_from_frame_delays() -> None:
    # FFmpeg's average rate leaves the last delay out (it says 12.5 fps here)
    delays = [50, 50, 100, 50, 50, 50, 50, 100]  # milliseconds, 0.5 s in all
    video = decode_video(_pil_gif(_moving_frames(), duration=delays, loop=0), **LIMITS)
    assert video.fps == pytest.approx(8 / 0.5)


def test_gif_transparency_is_composited_on_white() -> None:
    images = []
    for t in range(3):
        indices = np.zeros((20, 30), dtype=np.uint8)
        indices[5:10, 3 + 5 * t : 8 + 5 * t] = 1
        image = Image.fromarray(indices).convert("P")
        image.putpalette([0, 0, 0, *RED])
        images.append(image)
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], transparency=0, loop=0
    )
    video = decode_video(buffer.getvalue(), **LIMITS)
    assert tuple(video.frames[0, 0, 0]) == (255, 255, 255)  # transparent black shows as white
    assert tuple(video.frames[0, 6, 4]) == RED


def test_single_frame_gif_is_a_one_frame_clip() -> None:
    video = decode_video(_pil_gif(_moving_frames(1)), **LIMITS)
    assert video.frames.shape == (1, 48, 64, 3)


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("zero bytes", b""),
        ("random bytes", np.random.default_rng(0).bytes(4096)),
        ("text", b"this is not a video\n" * 50),
        ("mp4 cut in half", "half"),
        ("mp4 without its last 200 bytes", "tail"),
    ],
)
def test_undecodable_bytes(case: str, data: bytes | str) -> None:
    if isinstance(data, str):
        mp4 = _clip("mp4", "libx264")
        data = mp4[: len(mp4) // 2] if data == "half" else mp4[:-200]
    with pytest.raises(VideoDecodeError) as caught:
        decode_video(data, **LIMITS)
    assert not str(caught.value).startswith("[Errno"), f"{case}: {caught.value}"


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "BMP"])
def test_still_image_is_refused(image_format: str) -> None:
    # FFmpeg would open it as a one-frame clip; the image endpoint is the place for it
    with pytest.raises(VideoDecodeError, match="still image"):
        decode_video(_png(_moving_frames(1)[0], image_format), **LIMITS)


def test_audio_only_file_is_refused() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        silence = np.zeros((1, 800), np.int16)
        frame = av.AudioFrame.from_ndarray(silence, format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    # WAV is no container we read (issue 21 #7: FFmpeg's demuxers are an allow-list)
    with pytest.raises(VideoDecodeError, match="not a video in a container we read"):
        decode_video(buffer.getvalue(), **LIMITS)


def test_clip_without_frames_is_refused() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # headers only
    with pytest.raises(VideoDecodeError, match="no decodable frames"):
        decode_video(buffer.getvalue(), **LIMITS)


def test_unknown_codec_is_refused() -> None:
    data = _clip("mp4", "libx264").replace(b"avc1", b"zzzz")  # the sample entry's codec tag
    with pytest.raises(VideoDecodeError, match="no decoder"):
        decode_video(data, **LIMITS)


def test_declared_frame_count_over_limit_refused_before_decoding(converted: list[int]) -> None:
    data = _clip("mp4", "libx264")
    assert _declared_frames(data) == 8
    with pytest.raises(VideoTooLargeError, match=r"declares 8 frames.*limit of 4"):
        decode_video(data, max_frames=4, max_pixels=1_000_000)
    assert converted == []


def test_counted_frames_over_limit_stop_decoding(converted: list[int]) -> None:
    data = _clip("webm", "libvpx", _moving_frames(12))
    assert _declared_frames(data) == 0  # Matroska has no frame count: only counting catches it
    with pytest.raises(VideoTooLargeError, match="more than the limit of 3 frames"):
        decode_video(data, max_frames=3, max_pixels=1_000_000)
    assert len(converted) == 3


def test_frame_count_at_the_limit_is_accepted() -> None:
    video = decode_video(_clip("webm", "libvpx"), max_frames=8, max_pixels=64 * 48)
    assert video.frames.shape == (8, 48, 64, 3)


def test_total_pixels_over_limit_stop_decoding(converted: list[int]) -> None:
    """The decoded clip's memory is capped: frames × width × height."""
    data = _clip("webm", "libvpx", _moving_frames(12))
    budget = 5 * 64 * 48
    with pytest.raises(VideoTooLargeError, match=rf"limit of {budget} pixels in all"):
        decode_video(data, max_frames=100, max_pixels=1_000_000, max_total_pixels=budget)
    assert len(converted) == 5
    exact = decode_video(data, max_frames=100, max_pixels=1_000_000, max_total_pixels=12 * 64 * 48)
    assert exact.frames.shape == (12, 48, 64, 3)


def test_declared_pixels_over_limit_refused_before_decoding(converted: list[int]) -> None:
    with pytest.raises(VideoTooLargeError, match=r"64×48 = 3072 pixels.*limit of 3071"):
        decode_video(_clip("mp4", "libx264"), max_frames=100, max_pixels=64 * 48 - 1)
    assert converted == []


def test_gif_bomb_is_refused_from_its_header() -> None:
    # a real 64×48 GIF whose logical screen claims 20000×20000 (1.6 GB of RGBA)
    gif = bytearray(_clip("gif", "gif", pix_fmt="rgb8"))
    gif[6:10] = (20000).to_bytes(2, "little") * 2
    with pytest.raises(VideoTooLargeError, match="20000×20000"):
        decode_video(bytes(gif), **LIMITS)


def test_undeclared_size_over_limit_is_refused_by_the_decoder() -> None:
    # VP9 in WebM leaves the size to the decoder, whose own guard then refuses the frames
    data = _clip("webm", "libvpx-vp9")
    with pytest.raises(VideoDecodeError, match="limit of 3071 pixels"):
        decode_video(data, max_frames=100, max_pixels=64 * 48 - 1)
    assert decode_video(data, max_frames=100, max_pixels=64 * 48).frames.shape[0] == 8


def test_invalid_limits() -> None:
    with pytest.raises(ValueError, match="limits must be positive"):
        decode_video(_clip("mp4", "libx264"), max_frames=0, max_pixels=100)


def _decode_all(data: bytes) -> tuple[np.ndarray, str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames), stream.codec_context.name


@pytest.mark.parametrize(("height", "width"), [(48, 64), (47, 63)])
def test_overlay_mp4_round_trip(height: int, width: int) -> None:
    frames = _moving_frames(8, height, width)
    decoded, codec = _decode_all(encode_overlay_video(frames, 10.0, "mp4"))
    # odd sizes are padded to even by repeating the last row and column
    assert decoded.shape == (8, height + height % 2, width + width % 2, 3)
    assert codec == ("h264" if "libx264" in av.codecs_available else "mpeg4")
    _assert_colours_close(decoded, frames, f"{height}×{width}")
    assert decode_video(encode_overlay_video(frames, 10.0, "mp4"), **LIMITS).fps == 10.0


def test_overlay_mp4_padding_repeats_the_edge() -> None:
    frames = np.zeros((2, 47, 63, 3), dtype=np.uint8)
    frames[:, -1, :] = RED  # last row red, so the padding row must be red too
    frames[:, :, -1] = BLUE  # last column blue
    decoded, _ = _decode_all(encode_overlay_video(frames, 10.0, "mp4"))
    assert np.abs(decoded[:, 47, 10].astype(int) - RED).max() <= 40
    assert np.abs(decoded[:, 10, 63].astype(int) - BLUE).max() <= 40


def test_overlay_mp4_without_libx264(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ccnet.inference.video, "_mp4_codec", lambda: "mpeg4")
    frames = _moving_frames(8, 47, 63)
    decoded, codec = _decode_all(encode_overlay_video(frames, 29.97, "mp4"))
    assert codec == "mpeg4" and decoded.shape == (8, 48, 64, 3)
    _assert_colours_close(decoded, frames, "mpeg4")


def _gif_frames(data: bytes) -> tuple[list[np.ndarray], list[int], dict[str, object]]:
    with Image.open(io.BytesIO(data)) as image:
        info = dict(image.info)
        frames, delays = [], []
        for index in range(image.n_frames):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
            delays.append(image.info["duration"])
    return frames, delays, info


def test_overlay_gif_keeps_every_frame_and_odd_size() -> None:
    frames = _moving_frames(8, 47, 63)
    frames[3] = frames[2]  # identical neighbours must stay two frames
    decoded, delays, info = _gif_frames(encode_overlay_video(frames, 10.0, "gif"))
    assert len(decoded) == 8 and decoded[0].shape == (47, 63, 3)
    assert info["loop"] == 0  # loops forever
    assert delays == [100] * 8
    for t in range(8):  # few colours: the palette holds them exactly
        np.testing.assert_array_equal(decoded[t], frames[t], err_msg=f"frame {t}")
    video = decode_video(encode_overlay_video(frames, 10.0, "gif"), **LIMITS)
    assert video.frames.shape == (8, 47, 63, 3) and video.fps == pytest.approx(10.0)


def test_overlay_gif_delays_follow_fps() -> None:
    photo = skimage.data.astronaut()[::4, ::4]
    frames = np.stack([np.roll(photo, 8 * t, axis=1) for t in range(6)])
    decoded, delays, _ = _gif_frames(encode_overlay_video(frames, 30.0, "gif"))
    assert sorted(set(delays)) == [30, 40]  # whole centiseconds averaging 1/30 s
    assert sum(delays[:3]) == 100
    errors = [np.abs(d.astype(int) - f).mean() for d, f in zip(decoded, frames, strict=True)]
    error = np.mean(errors)
    assert error < 6, f"256-colour quantisation off by {error:.1f} grey levels on average"


def test_overlay_gif_fast_rates_keep_a_minimum_delay() -> None:
    _, delays, _ = _gif_frames(encode_overlay_video(_moving_frames(4), 240.0, "gif"))
    assert delays == [20, 20, 20, 20]


@pytest.mark.parametrize(
    ("frames", "fps", "fmt", "match"),
    [
        (np.zeros((2, 8, 8, 3), np.float32), 10.0, "mp4", "uint8"),
        (np.zeros((8, 8, 3), np.uint8), 10.0, "mp4", "T, H, W, 3"),
        (np.zeros((0, 8, 8, 3), np.uint8), 10.0, "gif", "at least one"),
        (np.zeros((2, 8, 8, 3), np.uint8), 0.0, "mp4", "fps"),
        (np.zeros((2, 8, 8, 3), np.uint8), float("nan"), "gif", "fps"),
        (np.zeros((2, 8, 8, 3), np.uint8), 10.0, "avi", "fmt"),
    ],
)
def test_overlay_invalid_arguments(frames: np.ndarray, fps: float, fmt: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_overlay_video(frames, fps, fmt)  # type: ignore[arg-type]


PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_mask_zip_round_trip() -> None:
    masks = np.random.default_rng(0).integers(0, 4, (3, 5, 7), dtype=np.uint8)
    extra = {"fps": 10.0, "classes": ["a", "b", "c", "d"], "frames": 3}
    data = encode_mask_zip(masks, PALETTE, extra=extra)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [
            "frame_00000.png",
            "frame_00001.png",
            "frame_00002.png",
            "clip.json",
        ]
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in archive.infolist())
        for index, mask in enumerate(masks):
            with Image.open(io.BytesIO(archive.read(f"frame_{index:05d}.png"))) as png:
                assert png.mode == "P", f"frame {index}"
                np.testing.assert_array_equal(np.asarray(png), mask, err_msg=f"frame {index}")
                assert png.getpalette()[:12] == [v for colour in PALETTE for v in colour]
        text = archive.read("clip.json").decode()
    assert json.loads(text) == extra
    assert text.index('"classes"') < text.index('"fps"') < text.index('"frames"')  # sorted


def test_mask_zip_without_extra_is_reproducible() -> None:
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    data = encode_mask_zip(masks, PALETTE)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["frame_00000.png", "frame_00001.png"]
    assert encode_mask_zip(masks, PALETTE) == data  # fixed timestamps: same masks, same bytes


def test_mask_zip_needs_a_stack_of_masks() -> None:
    with pytest.raises(ValueError, match="T, H, W"):
        encode_mask_zip(np.zeros((4, 4), dtype=np.uint8), PALETTE)


def test_media_types() -> None:
    required = {
        "video/mp4",
        "video/webm",
        "video/x-msvideo",
        "video/avi",
        "video/msvideo",
        "video/quicktime",
        "image/gif",
    }
    assert required <= MEDIA_TYPES.keys()
    assert MEDIA_TYPES["video/avi"] == MEDIA_TYPES["video/x-msvideo"] == "avi"
    assert "image/png" not in MEDIA_TYPES  # still images go to the image endpoint


def test_random_bytes_never_leak_ffmpeg_errors() -> None:
    rng = np.random.default_rng(1)
    mp4 = _clip("mp4", "libx264")
    for trial in range(20):
        corrupt = bytearray(mp4)
        positions = rng.integers(0, len(corrupt), 30)
        corrupt_values = rng.integers(0, 256, 30, dtype=np.uint8)
        for position, value in zip(positions, corrupt_values, strict=True):
            corrupt[position] = value
        try:
            video = decode_video(bytes(corrupt), **LIMITS)
        except (VideoDecodeError, VideoTooLargeError):
            continue
        except Exception as error:
            pytest.fail(f"trial {trial}: {type(error).__module__}.{type(error).__name__}: {error}")
        assert video.frames.ndim == 4 and video.frames.dtype == np.uint8, f"trial {trial}"
