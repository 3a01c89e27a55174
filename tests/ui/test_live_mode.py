"""The demo page's Live mode in headless Chromium with its fake camera, against a real server.

Chromium's ``--use-fake-device-for-media-stream`` gives ``getUserMedia`` a synthetic moving
picture and ``--use-fake-ui-for-media-stream`` grants the permission; the page streams it to
``WS /v1/stream`` and draws each mask over its frame.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_demo_page import (  # noqa: F401
    ARTIFACTS,
    UI_TIMEOUT_MS,
    launch_chromium,
    server,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def camera_browser() -> Iterator[object]:
    """Debian's chromium, headless, with the fake camera; skips when it is not installed."""
    yield from launch_chromium(
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"
    )


def test_live_mode_streams_the_camera_and_draws_masks(
    camera_browser: object,
    server: str,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    context = camera_browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(server + "/")
    page.click("#live-start")
    canvas = page.locator("#live-canvas")
    expect(page.locator("#live-status")).to_contain_text("Live: ccnet3d-tiny")
    # several masks drawn: the session keeps going, frame after frame
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    drawn = 0
    while drawn < 5 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
        drawn = int(page.eval_on_selector("#live-canvas", "c => c.dataset.frames || '0'"))
    assert drawn >= 5, f"only {drawn} masks drawn in {UI_TIMEOUT_MS / 1000:.0f} s"
    expect(canvas).to_be_visible()
    expect(page.locator("#live-stats")).to_contain_text("frames/s")
    expect(page.locator("#live-stats")).to_contain_text("ms latency")
    size = page.eval_on_selector("#live-canvas", "c => [c.width, c.height]")
    assert max(size) == 320, f"the live canvas is {size}: the frame's scaled size was expected"
    pixel = page.evaluate(
        "Array.from(document.getElementById('live-canvas').getContext('2d')"
        ".getImageData(10, 10, 1, 1).data)"
    )
    assert pixel[3] == 255, "nothing was drawn on the live canvas"
    assert sockets and "/v1/stream?model=ccnet3d-tiny" in sockets[0], sockets
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(Path(ARTIFACTS) / "live-mode.png"))
    page.click("#live-stop")
    expect(page.locator("#live-status")).to_contain_text("Live ended")
    assert page.eval_on_selector("#live-canvas", "c => c.dataset.closed") == "1000"
    assert not errors, f"page errors: {errors}"
    context.close()
