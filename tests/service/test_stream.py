"""WS /v1/stream: the protocol, its refusals (JSON error + close code) and its bounds."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ccnet.inference.stream import StreamSegmenter
from ccnet.inference.synth_scenes import render_clip, sample_rng

from .conftest import make_client, png_bytes

URL = "/v1/stream?model=ccnet3d-tiny"


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    images, _, _ = render_clip(sample_rng(5, "clips", "val", 0), size=96, frames=6)
    return [np.ascontiguousarray(image[:80, :96]) for image in images]


@pytest.fixture(scope="module")
def live() -> Iterator[TestClient]:
    with make_client(stream_max_sessions=3, stream_queue_frames=3, stream_max_unsent=2) as c:
        yield c


def _end_cleanly(ws) -> None:
    """End a session as a well-behaved client does: ``end``, then read until the close.

    Tests about abrupt disconnects drop their sessions on purpose (leaving the ``with`` block
    of an open session: the test client sends a disconnect, then cancels the app); the others
    end properly, so each test exercises one way of ending."""
    ws.send_json({"type": "end"})
    assert _until_close(ws)[-1] == {"close": 1000}


def _until_close(ws) -> list[dict]:
    """Every message until the server closes: JSON texts as dicts, binaries as bytes."""
    messages = []
    while True:
        message = ws.receive()
        if message["type"] == "websocket.close":
            messages.append({"close": message["code"]})
            return messages
        if message.get("text") is not None:
            import json

            messages.append(json.loads(message["text"]))
        else:
            messages.append(message["bytes"])


def _refusal(client: TestClient, url: str = URL, **kwargs) -> tuple[dict, int]:
    with client.websocket_connect(url, **kwargs) as ws:
        error, closed = _until_close(ws)
    return error, closed["close"]


def test_lock_step_masks_equal_the_library_stream(live, frames) -> None:
    local = StreamSegmenter.from_file("ccnet3d-tiny")
    with live.websocket_connect(URL, subprotocols=["ccnet.v1"]) as ws:
        assert ws.accepted_subprotocol == "ccnet.v1"
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["window"] == 4 and ready["lookahead"] == 0
        assert ready["reserved_bytes"] > 0
        for t, frame in enumerate(frames):
            ws.send_bytes(png_bytes(frame))
            header = ws.receive_json()
            mask = np.array(Image.open(io.BytesIO(ws.receive_bytes())))
            (expected,) = local.push(frame)
            assert header["type"] == "mask" and header["frame"] == t, header
            assert header["context"] == [max(0, t - 3), t]
            assert header["format"] == "png" and mask.shape == frame.shape[:2]
            assert set(header["timings"]) >= {"encode_ms", "head_ms", "total_ms"}
            assert (mask == expected.mask).mean() >= 0.999, f"frame {t}"
        ws.send_json({"type": "end"})
        end, closed = _until_close(ws)
    assert end == {
        "type": "end",
        "reason": "end",
        "received": 6,
        "processed": 6,
        "skipped": 0,
        "invalid": 0,
    }
    assert closed == {"close": 1000}


def test_lookahead_answers_the_held_frames_after_end(live, frames) -> None:
    with live.websocket_connect(URL + "&lookahead=2&output=overlay") as ws:
        assert ws.receive_json()["lookahead"] == 2
        for frame in frames[:3]:
            ws.send_bytes(png_bytes(frame))
        ws.send_json({"type": "end"})
        messages = _until_close(ws)
    headers = [m for m in messages if isinstance(m, dict) and m.get("type") == "mask"]
    assert [h["frame"] for h in headers] == [0, 1, 2]
    assert [h["context"] for h in headers] == [[0, 2], [0, 2], [0, 2]]
    assert all(h["format"] == "jpeg" for h in headers)
    jpeg = next(m for m in messages if isinstance(m, bytes))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    assert messages[-1] == {"close": 1000}


def test_frames_sent_without_reading_are_answered_or_reported_skipped(live, frames) -> None:
    sent = 24
    with live.websocket_connect(URL) as ws:
        ws.receive_json()
        for i in range(sent):
            ws.send_bytes(png_bytes(frames[i % len(frames)]))
        ws.send_json({"type": "end"})
        messages = _until_close(ws)
    answered = [m["frame"] for m in messages if isinstance(m, dict) and m.get("type") == "mask"]
    notices = [m for m in messages if isinstance(m, dict) and m.get("type") == "skipped"]
    skipped = [i for m in notices for i in m["skipped"]]
    assert sorted(answered + skipped) == list(range(sent)), "each frame exactly once"
    assert answered == sorted(answered)
    end = messages[-2]
    assert end["type"] == "end" and end["received"] == sent
    assert end["processed"] == len(answered) and end["skipped"] == len(skipped)


def test_a_bad_frame_is_reported_and_the_session_goes_on(live, frames) -> None:
    with live.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_bytes(b"not an image")
        error = ws.receive_json()
        assert error["type"] == "error" and error["code"] == "invalid_image"
        assert error["frame"] == 0
        ws.send_text("hello")
        assert ws.receive_json()["code"] == "bad_message"
        ws.send_bytes(png_bytes(frames[0]))
        assert ws.receive_json()["frame"] == 1
        ws.receive_bytes()
        ws.send_json({"type": "end"})
        assert _until_close(ws)[-1] == {"close": 1000}


def test_frames_that_never_decode_close_the_session(frames) -> None:
    with make_client(stream_max_bad_frames=3) as client, client.websocket_connect(URL) as ws:
        ws.receive_json()
        for _ in range(3):
            ws.send_bytes(b"\x89PNG garbage")
        messages = _until_close(ws)
    assert messages[-2]["code"] == "too_many_invalid_frames"
    assert messages[-1] == {"close": 1003}


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("&lookahead=4", "validation_error"),
        ("&output=svg", "validation_error"),
        ("&max_side=100000", "validation_error"),
        ("&alpha=nan", "validation_error"),
    ],
)
def test_bad_options_are_refused(live, query, code) -> None:
    error, closed = _refusal(live, URL + query)
    assert (error["type"], error["code"], closed) == ("error", code, 1008), error


def test_an_image_or_unknown_model_is_refused(live) -> None:
    for url in ("/v1/stream?model=ccnet-tiny", "/v1/stream?model=nope"):
        error, closed = _refusal(live, url)
        assert (error["code"], closed) == ("unknown_model", 1008), url


def test_a_frame_over_the_byte_limit_closes_with_1009(frames) -> None:
    with make_client(stream_max_frame_bytes=1000) as client, client.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_bytes(b"\0" * 1001)
        error, closed = _until_close(ws)
    assert (error["code"], closed["close"]) == ("payload_too_large", 1009)


def test_the_session_cap_and_the_budget_refuse_with_1013(frames) -> None:
    with make_client(stream_max_sessions=1) as client:
        with client.websocket_connect(URL) as first:
            assert first.receive_json()["type"] == "ready"
            error, closed = _refusal(client)
            assert (error["code"], closed) == ("overloaded", 1013)
            assert "CCNET_STREAM_MAX_SESSIONS" in error["message"]
            first.send_json({"type": "end"})
            _until_close(first)
        with client.websocket_connect(URL) as again:  # the slot came back
            assert again.receive_json()["type"] == "ready"
            _end_cleanly(again)
    # a session's worst case larger than the whole budget can never run
    with make_client(memory_budget_mb=16, stream_max_frame_bytes=8 << 20) as client:
        error, closed = _refusal(client)
        assert (error["code"], closed) == ("payload_too_large", 1009)
        assert client.get("/healthz").status_code == 200


def test_an_idle_session_is_closed(frames) -> None:
    with make_client(stream_idle_timeout_s=0.3) as client, client.websocket_connect(URL) as ws:
        ws.receive_json()
        error, closed = _until_close(ws)
    assert (error["code"], closed["close"]) == ("idle_timeout", 1001)


def test_frames_per_session_end_it_normally(frames) -> None:
    with make_client(stream_max_frames=2) as client, client.websocket_connect(URL) as ws:
        ws.receive_json()
        for frame in frames[:2]:
            ws.send_bytes(png_bytes(frame))
        messages = _until_close(ws)
    end = messages[-2]
    assert end["type"] == "end" and end["reason"] == "max_frames" and end["processed"] == 2
    assert messages[-1] == {"close": 1000}


def test_api_key_by_header_or_subprotocol_and_origin_check(frames) -> None:
    with make_client(api_key="s3cret", cors_origins=["https://app.example"]) as client:
        error, closed = _refusal(client)
        assert (error["code"], closed) == ("unauthorized", 1008)
        error, closed = _refusal(client, subprotocols=["ccnet.v1", "ccnet.key.wrong"])
        assert error["code"] == "unauthorized"
        with client.websocket_connect(URL, headers={"X-API-Key": "s3cret"}) as ws:
            assert ws.receive_json()["type"] == "ready"
            _end_cleanly(ws)
        with client.websocket_connect(URL, subprotocols=["ccnet.v1", "ccnet.key.s3cret"]) as ws:
            assert ws.accepted_subprotocol == "ccnet.v1"  # never the key
            assert ws.receive_json()["type"] == "ready"
            _end_cleanly(ws)
        headers = {"X-API-Key": "s3cret", "Origin": "https://evil.example"}
        error, closed = _refusal(client, headers=headers)
        assert (error["code"], closed) == ("forbidden_origin", 1008)
        for origin in ("https://app.example", "http://testserver"):  # listed, same origin
            with client.websocket_connect(
                URL, headers={"X-API-Key": "s3cret", "Origin": origin}
            ) as ws:
                assert ws.receive_json()["type"] == "ready", origin
                _end_cleanly(ws)


def test_stream_metrics_are_exported(live, frames) -> None:
    with live.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_bytes(png_bytes(frames[0]))
        ws.receive_json()
        ws.receive_bytes()
        ws.send_json({"type": "end"})
        _until_close(ws)
    text = live.get("/metrics").text
    for name in (
        'ccnet_stream_frames_total{model="ccnet3d-tiny",outcome="processed"}',
        'ccnet_stream_sessions{model="ccnet3d-tiny"} 0.0',
        "ccnet_stream_frame_seconds_bucket",
        'ccnet_stream_queue_depth{model="ccnet3d-tiny"} 0.0',
        'ccnet_stream_closes_total{reason="end"}',
    ):
        assert name in text, name


def test_a_disconnect_mid_stream_frees_the_slot(frames) -> None:
    with make_client(stream_max_sessions=1) as client:
        with client.websocket_connect(URL) as ws:
            ws.receive_json()
            ws.send_bytes(png_bytes(frames[0]))
        for _ in range(2):  # the slot came back each time
            with client.websocket_connect(URL) as ws:
                assert ws.receive_json()["type"] == "ready"
                ws.send_bytes(png_bytes(frames[1]))


def test_a_session_keeps_its_model_version_across_a_hot_reload(tmp_path, frames) -> None:
    """A reload swaps the model for new sessions; the open one ends on the version it began
    on, and that version is closed only after it."""
    import shutil
    import threading
    import time

    import torch

    from ccnet.inference.demo import ASSETS
    from ccnet.model.files import file_sha256
    from ccnet.service.api.state import app_state
    from ccnet.service.reload import ModelVersion
    from ccnet.service.served import ServedVideoModel

    NAME = "ccnet3d-tiny"
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(ASSETS / "ccnet3d-tiny.pt", models / "ccnet3d-tiny.pt")
    with make_client(model_dir=models, model_poll_s=3600) as client:
        registry = app_state(client.app).registry
        old = registry.get(NAME, ServedVideoModel)
        closed = threading.Event()
        real_close = old.close
        old.close = lambda: (real_close(), closed.set())  # type: ignore[method-assign]
        with client.websocket_connect(URL) as ws:
            first = ws.receive_json()["version"]["sha256"]
            ws.send_bytes(png_bytes(frames[0]))
            assert ws.receive_json()["frame"] == 0
            ws.receive_bytes()

            checkpoint = torch.load(models / "ccnet3d-tiny.pt", weights_only=False)
            checkpoint["note"] = "version 2"  # same weights, another file
            torch.save(checkpoint, tmp_path / "next.pt")
            shutil.move(tmp_path / "next.pt", models / "ccnet3d-tiny.pt")
            path = models / "ccnet3d-tiny.pt"
            version = ModelVersion(path, file_sha256(path), time.time())
            assert registry.replace_from_file(path, version, NAME) == NAME
            assert registry.get(NAME, ServedVideoModel) is not old

            with client.websocket_connect(URL) as other:
                assert other.receive_json()["version"]["sha256"] == version.sha256 != first
                other.send_json({"type": "end"})  # ended as a client should, not dropped
                assert _until_close(other)[-1] == {"close": 1000}
            ws.send_bytes(png_bytes(frames[1]))  # the old version still answers this one
            header = ws.receive_json()
            assert header["frame"] == 1 and header["context"] == [0, 1]
            ws.receive_bytes()
            assert not closed.is_set(), "the version in use was closed under the session"
            ws.send_json({"type": "end"})
            assert _until_close(ws)[-1] == {"close": 1000}
        assert closed.wait(10), "the old version outlived its last session"


def test_an_onnx_model_streams_with_its_stream_export_beside_it(tmp_path, frames) -> None:
    """A served model.onnx streams on ONNX Runtime when ``ccnet export stream`` put its two
    graphs beside it; without them the session is refused with a message that says so."""
    pytest.importorskip("onnxruntime")
    from ccnet.export.onnx import export_onnx
    from ccnet.export.stream_onnx import export_stream
    from ccnet.inference.demo import resolve_model_file

    checkpoint = resolve_model_file("ccnet3d-tiny")
    folder = tmp_path / "clip"
    exported = export_onnx(checkpoint, folder, check_sizes=[(64, 96), (48, 64)])
    with make_client(models=[str(exported.model_path)]) as client:
        error, closed = _refusal(client)
        assert (error["code"], closed) == ("validation_error", 1008)
        assert "ccnet export stream" in error["message"]
    export_stream(checkpoint, folder)
    local = StreamSegmenter.from_file("ccnet3d-tiny")
    client = make_client(models=[str(exported.model_path)])
    with client, client.websocket_connect(URL) as ws:
        ready = ws.receive_json()
        assert ready["backend"] == "onnxruntime", ready
        for t, frame in enumerate(frames[:3]):
            ws.send_bytes(png_bytes(frame))
            assert ws.receive_json()["frame"] == t
            mask = np.array(Image.open(io.BytesIO(ws.receive_bytes())))
            (expected,) = local.push(frame)
            assert (mask == expected.mask).mean() >= 0.999, f"frame {t}"
        ws.send_json({"type": "end"})
        assert _until_close(ws)[-1] == {"close": 1000}


def test_a_cancel_landing_during_cleanup_is_the_cancellers_own() -> None:
    """The cancel that ends a session while it is stopping its own tasks (the server going
    down, a test client leaving) must reach the canceller as *its* cancel, which its scope
    then absorbs. The old cleanup gathered the tasks and raised their earlier anonymous
    CancelledError instead: it escaped the scope (a flaky CancelledError in the tests)."""
    import asyncio

    import anyio
    from prometheus_client import CollectorRegistry
    from starlette.websockets import WebSocketState

    from ccnet.service.core.config import Settings
    from ccnet.service.live.hub import SessionHub
    from ccnet.service.live.limits import StreamLimits, StreamOptions
    from ccnet.service.live.session import LiveSession

    limits = StreamLimits.from_settings(Settings(log_format="text"))

    class Socket:
        """Says nothing until the session ends; then cancels the session's host scope."""

        application_state = WebSocketState.CONNECTED
        scope: anyio.CancelScope

        async def receive(self) -> dict:
            try:
                await anyio.sleep_forever()
            finally:
                self.scope.cancel()  # lands while run() waits for its tasks to stop

    async def main() -> bool:
        hub = SessionHub(limits, CollectorRegistry(), workers=1)
        socket = Socket()
        session = LiveSession(socket, None, "m", limits, StreamOptions(), hub, None)  # type: ignore[arg-type]
        try:
            with anyio.CancelScope() as scope:
                socket.scope = scope
                # the client went away: run() cancels its tasks, then waits for them
                asyncio.get_running_loop().call_later(0.05, session._done.set)
                await session.run()
            return scope.cancelled_caught
        finally:
            hub.close()

    assert asyncio.run(main()) is True
