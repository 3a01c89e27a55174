"""Issue 13: the service holds under hostile and heavy traffic (one test or more per row).

Rows #5 and #7 (connections, malformed HTTP) need a real HTTP server: they run uvicorn in a
thread with the service's protocol and small limits. The rest go through the TestClient.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from ccnet.service.api.state import app_state
from ccnet.service.core.config import Settings
from ccnet.service.core.http_protocol import ConnectionLimits, GuardedH11Protocol
from ccnet.service.main import create_app
from tests.service.conftest import make_client, png_bytes
from tests.service.test_api import _error, _gate, _post_clip, _post_image


def _multipart(body: bytes, boundary: str = "x") -> dict[str, str]:
    return {"content-type": f"multipart/form-data; boundary={boundary}"}


# ---------------------------------------------------------------- #1 many parts, #10 unclosed


def test_a_body_of_millions_of_empty_parts_is_refused_at_the_parts_limit(client) -> None:
    body = b"--x\r\n\r\n\r\n" * 200_000 + b"--x--\r\n"  # 1.8 MB, 200 k empty parts
    response = client.post("/v1/segment", content=body, headers=_multipart(body))
    message = _error(response, 400, "invalid_multipart")["error"]["message"]
    assert "more than 8 parts" in message


def test_part_headers_and_other_fields_are_bounded(client, small_rgb) -> None:
    image = png_bytes(small_rgb)
    long_header = (
        b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n" + image + b"\r\n--x--\r\n"
    )
    response = client.post("/v1/segment", content=long_header, headers=_multipart(long_header))
    _error(response, 400, "invalid_multipart")
    big_field = (
        b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
        + b"n" * 70_000
        + b'\r\n--x\r\nContent-Disposition: form-data; name="image"\r\n\r\n'
        + image
        + b"\r\n--x--\r\n"
    )
    response = client.post("/v1/segment", content=big_field, headers=_multipart(big_field))
    _error(response, 413, "payload_too_large")


def test_multipart_without_its_closing_boundary_is_malformed(client, small_rgb) -> None:
    body = (
        b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes(small_rgb)
    )
    response = client.post("/v1/segment", content=body, headers=_multipart(body))
    message = _error(response, 400, "invalid_multipart")["error"]["message"]
    assert "closing boundary" in message


# ---------------------------------------------------------------- #2 memory budget


def _flat_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_request_larger_than_the_whole_budget_is_refused_before_decoding(monkeypatch) -> None:
    import ccnet.service.api.acceptance as acceptance

    decoded = []
    monkeypatch.setattr(acceptance, "decode_image", lambda *a: decoded.append(1))
    with make_client(memory_budget_mb=64) as small:
        response = _post_image(small, _flat_png(3000, 3000), output="overlay")
        message = _error(response, 413, "too_much_memory")["error"]["message"]
        assert "3000×3000" in message and "CCNET_MEMORY_BUDGET_MB" in message
        assert app_state(small.app).budget.used == 0, "the reservation was returned"
    assert decoded == [], "decoding never started"


def test_concurrent_requests_are_admitted_by_cost(small_rgb) -> None:
    """One 2000×2000 overlay holds most of the budget while it runs: a second one is refused
    at once with 503, a small image still gets in, and all is returned afterwards."""
    big = _flat_png(2000, 2000)
    with make_client(memory_budget_mb=80, max_side=256) as limited:
        entered, release = _gate(limited)
        budget = app_state(limited.app).budget
        try:
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(_post_image, limited, big, output="overlay")
                assert entered.wait(30), "the first request never reached the model"
                held = budget.used
                assert held > 2000 * 2000 * 8, f"only {held} bytes reserved for a 4 MP overlay"
                began = time.perf_counter()
                refused = _post_image(limited, big, output="overlay")
                _error(refused, 503, "overloaded")
                assert refused.headers["retry-after"] == "1"
                assert time.perf_counter() - began < 5
                release.set()
                assert first.result(timeout=60).status_code == 200
        finally:
            release.set()
        assert _post_image(limited, png_bytes(small_rgb)).status_code == 200
        assert budget.used == 0


def test_overlay_and_decode_stay_within_the_cost_estimate() -> None:
    """The estimate is an upper bound on what decoding and the overlay really allocate."""
    import tracemalloc

    from ccnet.inference.codecs import decode_image
    from ccnet.inference.overlay import blend_overlay
    from ccnet.service.costs import ImageHeader, image_cost

    data = _flat_png(1500, 1000)
    tracemalloc.start()
    rgb = decode_image(data)
    mask = np.zeros(rgb.shape[:2], dtype=np.uint8)
    blend_overlay(rgb, mask, [[0, 0, 0], [255, 0, 0]], 0.5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    estimate = image_cost(
        ImageHeader(1500, 1000, "RGB", "PNG"), max_side=1024, classes=2, output="overlay"
    )
    assert peak < estimate, f"numpy buffers peaked at {peak} bytes, estimate {estimate}"


# ---------------------------------------------------------------- #3 clips admitted first


def test_a_clip_arriving_while_another_decodes_is_refused_before_decoding(
    monkeypatch, gif_clip
) -> None:
    import ccnet.service.api.acceptance as acceptance

    real = acceptance.decode_video
    started, release = threading.Event(), threading.Event()
    calls = []

    def held(*args, **kwargs):
        calls.append(1)
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(acceptance, "decode_video", held)
    with make_client(video_queue_size=1) as tight:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_post_clip, tight, gif_clip)
            assert started.wait(30), "the first clip never started decoding"
            began = time.perf_counter()
            _error(_post_clip(tight, gif_clip), 503, "overloaded")
            assert time.perf_counter() - began < 5
            release.set()
            assert first.result(timeout=60).status_code == 200
        assert calls == [1], "the refused clip was decoded"
        assert _post_clip(tight, gif_clip).status_code == 200  # the slot came back


def test_decoding_runs_at_most_decode_workers_at_a_time(monkeypatch, gif_clip) -> None:
    import ccnet.service.api.acceptance as acceptance

    real = acceptance.decode_video
    running, peak, lock = [0], [0], threading.Lock()

    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(acceptance, "decode_video", counted)
    # one client posting four clips at once: its share of the clip queue allows them
    settings = {"decode_workers": 1, "video_queue_size": 8, "client_video_queue_size": 4}
    with make_client(**settings) as one, ThreadPoolExecutor(4) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: _post_clip(one, gif_clip), range(4))]
    assert statuses == [200] * 4
    assert peak[0] == 1


# ---------------------------------------------------------------- #4 one deadline


def test_the_deadline_covers_decoding(monkeypatch, small_rgb) -> None:
    import ccnet.service.api.acceptance as acceptance

    real = acceptance.decode_image

    def slow(*args, **kwargs):
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(acceptance, "decode_image", slow)
    with make_client(request_timeout_s=0.3) as strict:
        backend = app_state(strict.app).registry.models["ccnet-tiny"].backend
        calls = []
        original = backend.infer
        backend.infer = lambda batch: calls.append(1) or original(batch)
        _error(_post_image(strict, png_bytes(small_rgb)), 503, "timeout")
        time.sleep(0.6)  # the decoder finishes; its result must not reach the model
        assert calls == []
        assert app_state(strict.app).budget.used == 0


def test_expired_work_does_not_run_and_does_not_hold_the_queue(small_rgb) -> None:
    with make_client(request_timeout_s=0.5, inference_workers=1, max_batch_size=1) as strict:
        entered, release = _gate(strict)
        backend = app_state(strict.app).registry.models["ccnet-tiny"].backend
        gated = backend.infer
        seen = []
        backend.infer = lambda batch: seen.append(batch.shape) or gated(batch)
        try:
            with ThreadPoolExecutor(3) as pool:
                futures = [pool.submit(_post_image, strict, png_bytes(small_rgb)) for _ in range(3)]
                assert entered.wait(30)
                answers = [f.result(timeout=30) for f in futures]
        finally:
            release.set()
        assert [a.status_code for a in answers] == [503] * 3
        time.sleep(0.3)
        assert len(seen) == 1, "expired requests reached the model"
        assert _post_image(strict, png_bytes(small_rgb)).status_code == 200


def test_a_clip_past_its_deadline_stops_at_its_next_window(gif_clip) -> None:
    with make_client(request_timeout_s=0.5) as strict:
        backend = app_state(strict.app).registry.models["ccnet3d-tiny"].backend
        original = backend.infer
        calls = []

        def slow(batch):
            calls.append(1)
            time.sleep(0.3)
            return original(batch)

        backend.infer = slow
        _error(_post_clip(strict, gif_clip), 503, "timeout")
        time.sleep(1.0)  # a window in flight finishes; no later one starts
        backend.infer = original
        assert 1 <= len(calls) <= 3, f"{len(calls)} windows ran for a request already answered"
        assert _post_clip(strict, gif_clip, output="json").status_code == 200


# ---------------------------------------------------------------- #6 client disconnect


def test_a_client_that_leaves_mid_upload_is_not_a_server_error(small_rgb) -> None:
    with make_client() as started:
        app = started.app
        body = png_bytes(small_rgb)
        messages = [
            {"type": "http.request", "body": body[:100], "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[dict] = []

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/segment",
            "raw_path": b"/v1/segment",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"image/png"), (b"content-length", b"5000")],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        asyncio.run(app(scope, receive, send))
        metrics = started.get("/metrics").text
    assert 'status="500"' not in metrics
    assert "ccnet_client_disconnects_total 1.0" in metrics
    assert 'code="client_disconnected"' in metrics


# ---------------------------------------------------------------- #8, #9 bad bytes and types


def test_a_truncated_jpeg_claiming_6000_by_6000_is_invalid(client) -> None:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    Image.fromarray(noise.repeat(10, 0).repeat(10, 1)).save(buffer, format="JPEG", quality=50)
    cut = buffer.getvalue()[:1500] + b"\xff\xd9"  # cut short, an end marker appended
    message = _error(_post_image(client, cut, "image/jpeg"), 400, "invalid_image")["error"]
    assert "truncated" in message["message"]


def test_a_genuine_flat_jpeg_of_that_size_still_decodes() -> None:
    from ccnet.inference.codecs import decode_image

    buffer = io.BytesIO()
    Image.new("L", (3000, 3000), 0).save(buffer, format="JPEG", quality=95, progressive=True)
    assert decode_image(buffer.getvalue()).shape == (3000, 3000, 3)


@pytest.mark.parametrize("content_type", [";;;==", "image", "/png", "image/png/x"])
def test_a_malformed_content_type_is_refused(client, small_rgb, content_type) -> None:
    response = client.post(
        "/v1/segment", content=png_bytes(small_rgb), headers={"content-type": content_type}
    )
    _error(response, 415, "unsupported_media_type")


# ---------------------------------------------------------------- headers, docs, CORS


def test_responses_carry_nosniff_and_html_a_restrictive_csp(client) -> None:
    assert client.get("/healthz").headers["x-content-type-options"] == "nosniff"
    assert client.get("/v1/nothing").headers["x-content-type-options"] == "nosniff"
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    csp = docs.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert "cdn" not in docs.text.lower() and "https://" not in docs.text
    asset = client.get("/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    _error(client.get("/docs/assets/..%2Fcore.py"), 404, "not_found")


def test_openapi_declares_the_api_key_schemes(client) -> None:
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= next(
        s for s in schemes.values() if s["type"] == "apiKey"
    ).items()
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    segment = schema["paths"]["/v1/segment"]["post"]
    assert len(segment["security"]) == 2
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_cors_is_off_by_default_and_follows_the_allow_list(client) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    assert (
        "access-control-allow-origin"
        not in client.options("/v1/segment", headers=preflight).headers
    )
    with make_client(cors_origins=["https://app.example"]) as open_to_one:
        allowed = open_to_one.options("/v1/segment", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = {**preflight, "origin": "https://evil.example"}
        assert (
            "access-control-allow-origin"
            not in open_to_one.options("/v1/segment", headers=other).headers
        )


def test_log_lines_are_rate_limited_per_template() -> None:
    import logging

    from ccnet.service.core.logging import RateLimitFilter

    limiter = RateLimitFilter(per_second=1.0, burst=5)

    def record(msg: str, **extra) -> logging.LogRecord:
        entry = logging.LogRecord("ccnet.x", logging.WARNING, __file__, 1, msg, (), None)
        entry.__dict__.update(extra)
        return entry

    passed = sum(limiter.filter(record("malformed HTTP request: %s")) for _ in range(1000))
    assert passed == 5
    assert limiter.filter(record("another template"))
    assert all(limiter.filter(record("%s %s", status=200)) for _ in range(100))


# ---------------------------------------------------------------- #5, #7 a real HTTP server

_LIMITS = ConnectionLimits(
    header_timeout_s=0.5, body_timeout_s=0.5, min_body_rate=1000, max_connections=8
)


class _TestProtocol(GuardedH11Protocol):
    limits = _LIMITS


@pytest.fixture(scope="module")
def live() -> Iterator[int]:
    """The app under uvicorn, in a thread, with the service's protocol and small limits."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(Settings(log_format="text", log_level="warning"))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=_TestProtocol,
        log_config=None,
        timeout_keep_alive=1,
        h11_max_incomplete_event_size=16 * 1024,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(timeout=30)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def _read_all(sock: socket.socket, limit: float = 5.0) -> tuple[bytes, float]:
    began = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data, time.monotonic() - began


def _healthz(port: int) -> bytes:
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _read_all(sock)[0]


def test_an_idle_connection_is_answered_408_and_closed(live) -> None:
    with _connect(live) as sock:
        data, waited = _read_all(sock)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b'"code":"request_timeout"' in data
    assert waited < 3


def test_headers_trickling_in_are_cut_at_the_header_timeout(live) -> None:
    with _connect(live) as sock:
        began = time.monotonic()
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - began > 4:
                break
        data, _ = _read_all(sock, 2)
    assert closed or data.startswith(b"HTTP/1.1 408"), data
    assert time.monotonic() - began < 5


def test_a_body_trickling_in_is_cut(live) -> None:
    with _connect(live) as sock:
        sock.sendall(
            b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        began = time.monotonic()
        cut = False
        while time.monotonic() - began < 5:
            try:
                sock.sendall(b"\x00" * 5)
            except OSError:
                cut = True
                break
            time.sleep(0.1)
            sock.settimeout(0.01)
            try:
                if sock.recv(1) == b"":
                    cut = True
                    break
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                cut = True
                break
    assert cut, "a 50 B/s body was never cut"
    assert time.monotonic() - began < 3


def test_past_the_connection_cap_idle_connections_make_room(live) -> None:
    idle = [_connect(live) for _ in range(20)]  # the cap is 8
    try:
        assert _healthz(live).startswith(b"HTTP/1.1 200"), "health check locked out"
        time.sleep(0.2)
        closed = 0
        for sock in idle:
            sock.settimeout(0.05)
            try:
                if sock.recv(1) == b"":
                    closed += 1
            except TimeoutError:
                pass
            except OSError:
                closed += 1
        assert closed >= 12, f"only {closed} of 20 idle connections were closed"
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n",
    ],
    ids=["bad-length", "two-lengths", "huge-header", "no-colon"],
)
def test_malformed_http_gets_a_json_error(live, request_bytes) -> None:
    with _connect(live) as sock:
        with contextlib.suppress(OSError):  # the server may answer before reading it all
            sock.sendall(request_bytes)
        data, _ = _read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    if b"X-Big" in request_bytes:
        assert head.startswith(b"HTTP/1.1 431"), data[:200]
        assert b'"code":"headers_too_large"' in body
    else:
        assert head.startswith(b"HTTP/1.1 400"), data[:200]
        assert b'"code":"bad_request"' in body
    assert b"content-type: application/json" in head.lower()


# ---------------------------------------------------------------- /docs offline, in chromium

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
def test_docs_render_in_chromium_with_no_internet(live) -> None:
    """Every request the page makes outside the server is blocked: Swagger UI must still
    render the API from the server's own assets."""
    import os
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    sync_api = pytest.importorskip("playwright.sync_api")
    base = f"http://127.0.0.1:{live}"
    outside: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"]
        )
        try:
            page = browser.new_page()

            def only_local(route) -> None:
                if route.request.url.startswith(base):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_local)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{base}/docs", wait_until="networkidle")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            title = page.inner_text(".swagger-ui .info .title")
            paths = page.eval_on_selector_all(
                ".opblock-summary-path", "nodes => nodes.map(n => n.textContent)"
            )
            authorize = page.query_selector(".btn.authorize")
        finally:
            browser.close()
    assert "CCNet segmentation service" in title
    assert "/v1/segment" in paths and "/v1/segment/video" in paths, paths
    assert authorize is not None, "the API-key schemes give Swagger UI an Authorize button"
    assert outside == [], f"the page reached outside the server: {outside}"
    assert not [e for e in errors if "Content Security Policy" in e], errors
