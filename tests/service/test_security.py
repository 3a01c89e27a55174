"""Issue 21: the holes a security review found, one test or more per row (#1-#7 here; the
model-file rows are in tests/service/test_model_files.py)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import logging
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ccnet.inference.codecs import ImageDecodeError, decode_image
from ccnet.service.api.state import app_state
from ccnet.service.core.config import Settings
from ccnet.service.core.http_protocol import ConnectionLimits, GuardedH11Protocol
from ccnet.service.core.logging import TextFormatter
from ccnet.service.main import create_app
from ccnet.service.tenancy import ClientShareError, ClientShares, TrustedProxies, client_id
from tests.service.conftest import make_client, png_bytes
from tests.service.test_api import _error, _post_clip, _post_image

MODEL = "ccnet-tiny"
INFER = f"/v2/models/{MODEL}/infer"


def _v2_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert body["code"] == code, body
    return body["error"]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Pillow's pixel loads (decoding; reading a header does not load)."""
    calls: list[int] = []
    original = Image.Image.load

    def counted(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(Image.Image, "load", counted)
    return calls


def _uint8_json(shape: list[int], data: list[int], **extra: object) -> bytes:
    return orjson.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": shape,
                                     "data": data}], **extra})  # fmt: skip


# ---------------------------------------------------------------- #1 a huge JSON tensor


def test_a_json_body_past_its_limit_is_refused_before_parsing(client, monkeypatch) -> None:
    """30 M values declared [1,1,1,3]: refused from Content-Length, nothing parsed."""
    parsed: list[int] = []
    monkeypatch.setattr(orjson, "loads", lambda *a: parsed.append(1))
    limit = app_state(client.app).settings.v2_json_max_bytes
    body = (
        b'{"inputs":[{"name":"image","datatype":"UINT8","shape":[1,1,1,3],"data":['
        + (b"1," * (limit // 2))
        + b"1]}]}"
    )
    message = _v2_error(client.post(INFER, content=body), 413, "payload_too_large")
    assert str(limit) in message and not parsed


def test_a_json_tensor_is_checked_against_its_shape_before_conversion(client) -> None:
    response = client.post(INFER, content=_uint8_json([1, 1, 1, 3], [7] * 3000))
    assert "3000 values for shape [1, 1, 1, 3]" in _v2_error(
        response, 400, "invalid_inference_request"
    )
    assert app_state(client.app).budget.used == 0


def test_a_json_header_longer_than_its_limit_is_refused(client) -> None:
    response = client.post(
        INFER, content=b"{}", headers={"Inference-Header-Content-Length": str(1 << 30)}
    )
    _v2_error(response, 413, "payload_too_large")


# ---------------------------------------------------------------- #2 encoded images


def test_encoded_images_are_admitted_from_their_headers_before_decoding(loads) -> None:
    flat = png_bytes(np.zeros((1000, 4000, 3), np.uint8))  # 4 MP, a few kB
    request = {
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [8],
                    "data": [base64.b64encode(flat).decode()] * 8}],
        "parameters": {"binary_data_output": True},
    }  # fmt: skip
    with make_client(memory_budget_mb=64) as small:
        loads.clear()
        response = small.post(INFER, content=orjson.dumps(request))
        assert "8 image(s) of 4000×1000" in _v2_error(response, 413, "too_much_memory")
        assert not loads, "refused before any image was decoded"
        assert app_state(small.app).budget.used == 0


def test_an_encoded_image_in_a_format_we_do_not_document_is_refused(client) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PCX")
    request = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(buffer.getvalue()).decode()]}]}  # fmt: skip
    _v2_error(client.post(INFER, content=orjson.dumps(request)), 400, "invalid_image")


# ---------------------------------------------------------------- #3 logits as JSON


def test_logits_as_json_past_the_json_limit_are_refused_before_inference(client, loads) -> None:
    rgb = np.zeros((600, 600, 3), np.uint8)
    request = {
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                    "data": [base64.b64encode(png_bytes(rgb)).decode()]}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
    }  # fmt: skip
    loads.clear()
    message = _v2_error(client.post(INFER, content=orjson.dumps(request)), 413, "output_too_large")
    assert "binary" in message and not loads


def test_binary_logits_are_costed_at_the_size_they_are_returned() -> None:
    rgb = np.zeros((512, 512, 3), np.uint8)
    head = orjson.dumps({
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 512, 512, 3],
                    "parameters": {"binary_data_size": rgb.size}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    })  # fmt: skip
    headers = {"Inference-Header-Content-Length": str(len(head))}
    # the image alone fits 24 MiB; its 512×512×6 float32 logits, copied for the answer, do not
    with make_client(memory_budget_mb=24) as small:
        app_state(small.app).registry.models[MODEL].activation_per_pixel = 0.0
        plain = orjson.loads(head)
        del plain["outputs"]
        mask_head = orjson.dumps(plain)
        ok = small.post(
            INFER,
            content=mask_head + rgb.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(mask_head))},
        )
        assert ok.status_code == 200, ok.text[:300]
        response = small.post(INFER, content=head + rgb.tobytes(), headers=headers)
        _v2_error(response, 413, "too_much_memory")


# ---------------------------------------------------------------- #5 activations


def test_v2_is_charged_the_models_activations(client) -> None:
    served = app_state(client.app).registry.models[MODEL]
    rgb = np.zeros((64, 64, 3), np.uint8)
    request = _uint8_json([1, 64, 64, 3], rgb.reshape(-1).tolist())
    saved = served.activation_per_pixel
    served.activation_per_pixel = 1e9  # an activation figure no budget holds
    try:
        _v2_error(client.post(INFER, content=request), 413, "too_much_memory")
        _error(_post_image(client, png_bytes(rgb)), 413, "too_much_memory")  # as /v1
    finally:
        served.activation_per_pixel = saved
    assert client.post(INFER, content=request).status_code == 200


# ---------------------------------------------------------------- #4 squatting uploads


@pytest.fixture(scope="module")
def live_upload() -> Iterator[int]:
    """The app under uvicorn in a thread: a 3 s upload deadline, a 32 MiB budget, no minimum
    body rate."""
    import uvicorn

    class Protocol(GuardedH11Protocol):
        limits = ConnectionLimits(
            header_timeout_s=5, body_timeout_s=5, min_body_rate=0, max_connections=16
        )

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(
        Settings(log_format="text", log_level="warning", upload_timeout_s=3.0, memory_budget_mb=32)
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, http=Protocol, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    for _ in range(1200):  # the models load in the background
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/readyz")
        if connection.getresponse().status == 200:
            break
        time.sleep(0.1)
    yield port
    server.should_exit = True
    thread.join(timeout=30)


def test_an_upload_has_an_absolute_deadline(live_upload) -> None:
    """A body trickling steadily (2 kB/s, any rate limit passed) is answered 408 at the
    upload deadline, not held for as long as it trickles."""
    with socket.create_connection(("127.0.0.1", live_upload), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000000\r\n\r\n"
        )
        answer = b""
        sock.settimeout(0.1)
        for _ in range(100):  # at most 10 s of trickling
            try:
                sock.sendall(b"\0" * 200)
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if b"\r\n\r\n" in answer and b"}" in answer:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"upload_timeout"' in answer


def test_body_limits_are_lowered_to_what_one_upload_may_hold() -> None:
    with make_client(memory_budget_mb=32, max_upload_share=0.25) as limited:
        # 14 MiB is under max_image_bytes (20 MiB) but would hold 28 of the 32 MiB
        response = limited.post(
            "/v1/segment", content=b"\0" * (14 << 20), headers={"content-type": "image/png"}
        )
        _error(response, 413, "payload_too_large")


def _squat(port: int, declared: int, sent: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {declared}\r\n\r\n".encode()
    )
    with contextlib.suppress(OSError):  # a refused body may be cut mid-send
        sock.sendall(b"\0" * sent)
    return sock


def test_a_squatting_upload_leaves_room_for_other_uploads(live_upload, small_rgb) -> None:
    """One upload sends most of a body and stalls: small uploads keep getting 200s. A body
    that would hold more than an upload's share (14 MiB: 28 of 32 MiB) is refused at once."""
    with _squat(live_upload, 14 << 20, 14 << 20) as greedy:
        greedy.settimeout(5)
        assert greedy.recv(4096).startswith(b"HTTP/1.1 413")
    with _squat(live_upload, 3 << 20, (3 << 20) - 1):  # stays open, holding 6 MiB
        time.sleep(0.3)
        for _ in range(3):
            connection = http.client.HTTPConnection("127.0.0.1", live_upload, timeout=30)
            connection.request(
                "POST", "/v1/segment", png_bytes(small_rgb), {"Content-Type": "image/png"}
            )
            assert connection.getresponse().status == 200


def test_one_clients_uploads_hold_at_most_its_share() -> None:
    shares = ClientShares(100, lambda n: f"{n} B")
    shares.take("a", 60)
    with pytest.raises(ClientShareError, match="60 B of the 100 B"):
        shares.take("a", 50)
    shares.take("b", 50)  # another client is not affected
    shares.give("a", 60)
    shares.take("a", 50)


def test_a_shared_queue_is_split_fairly_among_the_clients_using_it() -> None:
    """64 slots, at most 16 a client: eight clients holding 8 each fill the queue; a ninth
    arriving lowers everyone's part to 64 // 9 = 7, so as their work finishes they cannot
    take the freed slots back and the newcomer gets in."""
    shares = ClientShares(16, lambda n: f"{n} requests", fair_total=64)
    attackers = [f"10.0.0.{i}" for i in range(8)]
    for client in attackers:
        for _ in range(8):
            shares.take(client)
    with pytest.raises(ClientShareError):
        shares.take(attackers[0])  # 9 > 64 // 8
    shares.take("victim")  # its part is 64 // 9 = 7
    shares.give(attackers[0])
    with pytest.raises(ClientShareError, match="7 requests one client may hold at once now"):
        shares.take(attackers[0])  # back to 7: it may not refill the slot it freed
    alone = ClientShares(16, lambda n: f"{n} requests", fair_total=64)
    for _ in range(16):
        alone.take("only")  # one client alone may use its whole limit


class _Connection:
    def __init__(self, peer: str, forwarded: str | None = None) -> None:
        self.client = type("Address", (), {"host": peer})()
        self.headers = {"x-forwarded-for": forwarded} if forwarded else {}


def test_clients_are_told_apart_by_address_and_trusted_proxies_only() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert client_id(_Connection("192.0.2.7", "1.2.3.4"), proxies) == "192.0.2.7"  # a claim
    assert client_id(_Connection("10.0.0.2", "1.2.3.4, 10.0.0.9"), proxies) == "1.2.3.4"
    assert client_id(_Connection("10.0.0.2"), proxies) == "10.0.0.2"
    assert client_id(_Connection("10.0.0.2"), TrustedProxies([])) == "10.0.0.2"
    everyone = TrustedProxies(["0.0.0.0/0"])  # the replicas behind docker/nginx.conf
    assert client_id(_Connection("172.18.0.5", "203.0.113.4"), everyone) == "203.0.113.4"


# ---------------------------------------------------------------- #6 fair queues


def test_one_client_cannot_fill_the_clip_queue(gif_clip) -> None:
    """A client with a clip in flight is refused a second; another client is served."""
    with make_client(video_queue_size=4, client_video_queue_size=1) as started:
        segmenter = app_state(started.app).registry.models["ccnet3d-tiny"].segmenter
        original = segmenter.segment
        entered, release = threading.Event(), threading.Event()

        def held(*args, **kwargs):
            entered.set()
            release.wait(30)
            return original(*args, **kwargs)

        segmenter.segment = held
        first: list[int] = []
        thread = threading.Thread(
            target=lambda: first.append(_post_clip(started, gif_clip).status_code)
        )
        thread.start()
        try:
            assert entered.wait(30)
            _error(_post_clip(started, gif_clip), 503, "overloaded")  # the same client
            segmenter.segment = original
            other = TestClient(started.app, client=("192.0.2.9", 5000))
            assert _post_clip(other, gif_clip).status_code == 200
        finally:
            release.set()
            thread.join(30)
        assert first == [200]


# ---------------------------------------------------------------- #7 decoders


@pytest.mark.parametrize("image_format", ["PCX", "TGA", "DDS", "ICNS", "JPEG2000", "EPS"])
def test_only_documented_image_formats_are_decoded(image_format: str) -> None:
    buffer = io.BytesIO()
    image = Image.new("RGB", (16, 16), (200, 10, 10))
    try:
        image.save(buffer, format=image_format)
    except (OSError, KeyError) as error:  # EPS needs Ghostscript to write; test its header
        if image_format != "EPS":
            raise pytest.skip(f"Pillow cannot write {image_format}: {error}") from None
        buffer = io.BytesIO(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n")
    with pytest.raises(ImageDecodeError, match="not one of PNG"):
        decode_image(buffer.getvalue())


def test_an_undocumented_video_codec_is_refused() -> None:
    import av

    from ccnet.inference.video import VideoDecodeError, decode_video

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(VideoDecodeError, match="'ffv1' is not one of"):
        decode_video(buffer.getvalue(), max_frames=10, max_pixels=10_000)


# ---------------------------------------------------------------- #12 /metrics


def test_metrics_need_the_key_when_one_is_set() -> None:
    with make_client(api_key="k3y") as locked:
        _error(locked.get("/metrics"), 401, "unauthorized")
        answer = locked.get("/metrics", headers={"authorization": "Bearer k3y"})
        assert answer.status_code == 200 and "ccnet_memory_budget_used_bytes" in answer.text


# ---------------------------------------------------------------- #14 500 hygiene


def test_a_server_error_has_the_request_id_headers_and_one_log_line(client, caplog) -> None:
    registry = app_state(client.app).registry
    served = registry.models[MODEL]
    original = type(served).describe

    def broken(self, default):
        raise TypeError("a bug " + "x" * 5000)

    type(served).describe = broken
    try:
        with caplog.at_level(logging.INFO, logger="ccnet"):
            caplog.clear()
            with TestClient(client.app, raise_server_exceptions=False) as plain:
                answer = plain.get("/v1/models", headers={"x-request-id": "req-500"})
    finally:
        type(served).describe = original
    body = _error(answer, 500, "internal_error")
    assert "bug" not in body["error"]["message"]
    assert answer.headers["x-request-id"] == "req-500"
    assert answer.headers["x-content-type-options"] == "nosniff"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert "TypeError" in line and "/v1/models" in line and len(line) < 400


# ---------------------------------------------------------------- #15 log escaping


def test_text_logs_escape_control_characters() -> None:
    formatter = TextFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "ccnet.service.access",
        logging.INFO,
        __file__,
        1,
        "%s %s",
        ("GET", "/a\r\nINFO forged\x1b[2J"),
        None,
    )
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line == "INFO GET /a\\r\\nINFO forged\\x1b[2J"


# ---------------------------------------------------------------- secure by default


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({"host": "0.0.0.0"}, True),
        ({"host": "::"}, True),
        ({"host": "example.org"}, True),
        ({"host": "127.0.0.1"}, False),
        ({"host": "::1"}, False),
        ({"host": "localhost"}, False),
        ({"host": "0.0.0.0", "api_key": "k"}, False),
        ({"host": "0.0.0.0", "allow_anonymous": True}, False),
    ],
)
def test_a_public_address_needs_a_key_or_an_explicit_yes(overrides, refused) -> None:
    problem = Settings(**overrides).exposure_problem()
    assert (problem is not None) == refused, problem
    if refused:
        assert "CCNET_API_KEY" in problem and "CCNET_ALLOW_ANONYMOUS" in problem


def test_serve_refuses_a_public_address_without_a_key(monkeypatch, capsys) -> None:
    from ccnet.cli import main

    monkeypatch.delenv("CCNET_API_KEY", raising=False)
    monkeypatch.delenv("CCNET_ALLOW_ANONYMOUS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "refusing to serve on 0.0.0.0 without an API key" in capsys.readouterr().err


# ---------------------------------------------------------------- #14 type-confused /v2


@pytest.mark.parametrize(
    "request_json",
    [
        {"inputs": "image"},
        {"inputs": [{"name": "image", "datatype": "UINT8", "shape": "1,2,2,3", "data": [1]}]},
        {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": "x"}]},
        {"inputs": [{"name": "image", "shape": [True, 2, 2, 3], "data": [1] * 12}]},
        {"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "data": [[1, 2], "a"]}]},
        {"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "data": [1.5] * 12}]},
        {"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "data": [1] * 12}],
         "parameters": ["binary_data_output"]},
        {"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "data": [1] * 12}],
         "outputs": [1]},
        {"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "data": [1] * 12}],
         "outputs": [{"name": "mask", "parameters": "binary"}]},
        {"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "parameters": ["x"],
                     "data": [1] * 12}]},
        {"inputs": [{"name": "image_bytes", "shape": [1], "data": [7]}]},
        {"inputs": [{"name": "image", "shape": [1, 2, 2, 3],
                     "parameters": {"binary_data_size": "12"}}]},
    ],
)  # fmt: skip
def test_type_confused_v2_requests_are_4xx(client, request_json) -> None:
    response = client.post(INFER, content=orjson.dumps(request_json))
    assert 400 <= response.status_code < 500, response.text[:300]
    assert isinstance(response.json()["error"], str)


def test_nginx_limits_each_client_as_the_service_does() -> None:
    """docker/nginx.conf caps connections per client address at CLIENT_QUEUE_SIZE and rate
    limits requests per address, answering 429."""
    import re
    from pathlib import Path

    conf = (Path(__file__).resolve().parents[2] / "docker" / "nginx.conf").read_text()
    zone = re.search(r"limit_conn_zone \$binary_remote_addr zone=(\w+):", conf)
    assert zone is not None, "a connection zone keyed by client address"
    cap = re.search(rf"limit_conn {zone.group(1)} (\d+);", conf)
    assert cap is not None and int(cap.group(1)) == Settings().client_queue_size
    assert re.search(r"limit_req_zone \$binary_remote_addr zone=(\w+):\w+ rate=\d+r/s;", conf)
    assert re.search(r"limit_req zone=\w+ burst=\d+ nodelay;", conf)
    assert "limit_conn_status 429;" in conf and "limit_req_status 429;" in conf
    # the replicas trust nginx's X-Forwarded-For, so nginx must write it, not append to it
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf
