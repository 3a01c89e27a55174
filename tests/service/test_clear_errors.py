"""Common mistakes get errors that say what is wrong (issue 22 #6): the wrong form field, a
photo sent as a clip (and a clip as a photo), an image to a clip model, a mistyped query
parameter."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ccnet.inference.video import encode_overlay_video
from tests.service.conftest import make_client


@pytest.fixture(scope="module")
def client():
    with make_client(precision="fp32") as started:
        yield started


@pytest.fixture(scope="module")
def photo(astronaut) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, format="JPEG", quality=90)  # > 64 KiB
    assert len(buffer.getvalue()) > 64 * 1024
    return buffer.getvalue()


def _error(answer, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code, error
    return error["message"]


def test_file_under_another_field_name_is_named(client, photo) -> None:
    """Was 413 "the form's other fields hold more than 65536 bytes"."""
    answer = client.post("/v1/segment", files={"file": ("photo.jpg", photo, "image/jpeg")})
    message = _error(answer, 422, "missing_field")
    assert "'image'" in message and "(got 'file')" in message
    small = client.post("/v1/segment", files={"upload": ("a.png", b"\x89PNG", "image/png")})
    assert "(got 'upload')" in _error(small, 422, "missing_field")


def test_still_image_sent_as_a_clip_is_415(client, photo) -> None:
    """Was 413 "a clip of 300 frames … 1064 MiB"."""
    answer = client.post("/v1/segment/video", files={"video": ("photo.jpg", photo, "image/jpeg")})
    message = _error(answer, 415, "not_a_clip")
    assert "JPEG" in message and "/v1/segment" in message
    raw = client.post("/v1/segment/video", content=photo)  # undeclared: the bytes decide
    _error(raw, 415, "not_a_clip")


def test_clip_sent_as_an_image_is_415(client) -> None:
    frames = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    mp4 = encode_overlay_video(frames, 4.0, "mp4")
    answer = client.post("/v1/segment", files={"image": ("clip.mp4", mp4, "video/mp4")})
    assert "/v1/segment/video" in _error(answer, 415, "not_an_image")


def test_image_to_a_clip_model_has_its_own_code(client, photo) -> None:
    """Was 422 unknown_model "needs a image model"."""
    answer = client.post(
        "/v1/segment?model=ccnet3d-tiny", files={"image": ("p.jpg", photo, "image/jpeg")}
    )
    message = _error(answer, 422, "wrong_model_kind")
    assert "an image model" in message and "/v1/segment/video" in message


def test_unknown_query_parameter_is_refused_with_the_known_ones(client, photo) -> None:
    """Was 200 with the typo ignored."""
    answer = client.post(
        "/v1/segment?outptu=overlay", files={"image": ("p.jpg", photo, "image/jpeg")}
    )
    message = _error(answer, 422, "unknown_parameter")
    assert "'outptu'" in message and "did you mean output?" in message
    for known in ("alpha", "format", "legend", "model", "output", "rle"):
        assert known in message
    video = client.post("/v1/segment/video?frmat=gif", content=b"x")
    assert "format" in _error(video, 422, "unknown_parameter")
    fine = client.post("/v1/segment?output=json", files={"image": ("p.jpg", photo, "image/jpeg")})
    assert fine.status_code == 200
