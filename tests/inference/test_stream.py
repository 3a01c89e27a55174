"""StreamSegmenter: causal live masks equal the offline clip path on the same frames."""

from __future__ import annotations

import numpy as np
import pytest

from ccnet.inference.segmenter import ClipSegmenter
from ccnet.inference.stream import StreamSegmenter
from ccnet.inference.synth_scenes import render_clip, sample_rng

PARITY = 0.999  # the bar: share of pixels on which the two paths agree


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Seven synthetic frames of moving objects, one made 100×140 so that padding is used."""
    images, _, _ = render_clip(sample_rng(3, "clips", "val", 0), size=128, frames=7)
    return [np.ascontiguousarray(image[:100, :140]) for image in images]


@pytest.fixture(scope="module")
def offline() -> ClipSegmenter:
    return ClipSegmenter.from_file("ccnet3d-tiny", backend="torch", device="cpu", precision="fp32")


def _expected(offline: ClipSegmenter, frames: list[np.ndarray], first: int, last: int):
    """The last frame of ClipSegmenter on frames[first .. last]: the causal reference."""
    return offline.segment(np.stack(frames[first : last + 1])).masks[-1]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def test_causal_masks_match_the_clip_path_on_the_trailing_window(frames, offline) -> None:
    live = StreamSegmenter.from_file("ccnet3d-tiny")
    window = live.window
    for t, frame in enumerate(frames):
        (result,) = live.push(frame)
        first = max(0, t - window + 1)
        assert result.frame == t and result.context == (first, t)
        agree = _agreement(result.mask, _expected(offline, frames, first, t))
        assert agree >= PARITY, f"frame {t}: {agree:.4%} of pixels agree"
    assert live.flush() == []


def test_lookahead_waits_and_uses_the_later_frames(frames, offline) -> None:
    live = StreamSegmenter.from_file("ccnet3d-tiny", lookahead=2)
    answered = []
    for t, frame in enumerate(frames):
        out = live.push(frame)
        assert [r.frame for r in out] == ([t - 2] if t >= 2 else []), f"push {t}"
        answered += out
    answered += live.flush()
    assert [r.frame for r in answered] == list(range(len(frames)))
    window = live.window
    for result in answered:
        first, last = result.context
        assert last == min(result.frame + 2, len(frames) - 1)
        assert first == max(0, last - window + 1)
        clip = offline.segment(np.stack(frames[first : last + 1])).masks
        agree = _agreement(result.mask, clip[result.frame - first])
        assert agree >= PARITY, f"frame {result.frame}: {agree:.4%}"


def test_a_new_frame_size_starts_a_new_window(frames) -> None:
    live = StreamSegmenter.from_file("ccnet3d-tiny", lookahead=1)
    assert live.push(frames[0]) == []
    smaller = np.ascontiguousarray(frames[1][:64, :80])
    out = live.push(smaller)  # answers frame 0 with the old window; frame 1 waits
    assert [(r.frame, r.context) for r in out] == [(0, (0, 0))]
    (last,) = live.flush()
    assert last.frame == 1 and last.context == (1, 1) and last.mask.shape == (64, 80)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lookahead": 4}, "lookahead must be in"), ({"lookahead": -1}, "lookahead must be in")],
)
def test_bad_options_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        StreamSegmenter.from_file("ccnet3d-tiny", **kwargs)


def test_a_bad_frame_leaves_the_stream_as_it_was(frames) -> None:
    live = StreamSegmenter.from_file("ccnet3d-tiny")
    live.push(frames[0])
    with pytest.raises(ValueError, match="uint8 image"):
        live.push(np.zeros((10, 10), dtype=np.float32))
    (result,) = live.push(frames[1])
    assert result.frame == 1 and result.context == (0, 1)


@pytest.fixture(scope="module")
def stream_export(tmp_path_factory) -> str:
    pytest.importorskip("onnxruntime")
    from ccnet.export.stream_onnx import export_stream
    from ccnet.inference.demo import resolve_model_file

    folder = tmp_path_factory.mktemp("stream")
    return str(export_stream(resolve_model_file("ccnet3d-tiny"), folder))


def test_onnxruntime_split_graphs_match_the_clip_path(frames, offline, stream_export) -> None:
    live = StreamSegmenter.from_file(stream_export)
    assert live.model.name == "onnxruntime" and live.window == offline.window
    for t, frame in enumerate(frames):
        (result,) = live.push(frame)
        first = max(0, t - live.window + 1)
        agree = _agreement(result.mask, _expected(offline, frames, first, t))
        assert agree >= PARITY, f"onnxruntime, frame {t}: {agree:.4%} of pixels agree"


def test_predict_live_writes_each_frame_as_it_comes(frames, offline, tmp_path, capsys) -> None:
    """``ccnet predict SOURCE --live`` on a clip file: a mask per frame, JSON lines on stdout,
    the same masks as the library's stream on the decoded frames."""
    import json

    import av
    from PIL import Image

    from ccnet.cli import main
    from ccnet.inference.video import encode_overlay_video

    even = np.stack([f[:96, :128] for f in frames])  # even sizes for the H.264 encoder
    source = tmp_path / "clip.mp4"
    source.write_bytes(encode_overlay_video(even, 10.0, "mp4"))
    with av.open(str(source)) as container:  # what the command will see (lossy codec)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    argv = ["predict", str(source), "--live", "-o", str(tmp_path / "out"), "--output", "both"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["frame"] for line in lines] == list(range(len(decoded)))
    local = StreamSegmenter.from_file("ccnet3d-tiny")
    for line, frame in zip(lines, decoded, strict=True):
        (expected,) = local.push(frame)
        mask = np.array(Image.open(tmp_path / "out" / line["files"]["mask"]))
        assert (mask == expected.mask).mean() >= PARITY, line
        assert (tmp_path / "out" / line["files"]["overlay"]).is_file()


def test_predict_live_names_a_source_it_cannot_open(tmp_path, capsys) -> None:
    from ccnet.cli import main

    assert main(["predict", str(tmp_path / "nothing.mp4"), "--live", "-o", str(tmp_path)]) == 2
    assert "nothing.mp4: cannot open" in capsys.readouterr().err
