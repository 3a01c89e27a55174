"""The demo page in a real browser against the real server: image, error, drop and clip.

Drives Debian's chromium (``apt-get install chromium``) through Playwright; Playwright's own
browser download is never used. Screenshots land in ``tests/artifacts/``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
APP_FACTORY = "ccnet.service.main:create_app"
READY_TIMEOUT_S = 120.0
UI_TIMEOUT_MS = 45_000

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app under uvicorn on a free port, with the bundled demo models."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "stderr.log"
    env = {**os.environ, "CCNET_LOG_FORMAT": "text", "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    env.pop("CCNET_API_KEY", None)  # the page is tested without a key
    command = [sys.executable, "-m", "uvicorn", "--factory", APP_FACTORY]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready:
                break
            time.sleep(0.25)
        if not ready:
            state = f"exited with {process.returncode}" if process.poll() is not None else "running"
            pytest.fail(
                f"the server ({state}) was not ready within {READY_TIMEOUT_S:.0f} s; "
                f"its stderr:\n{log.read_text(errors='replace')[-6000:]}"
            )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch_chromium(*flags: str) -> Iterator[object]:
    """Debian's chromium, headless, with ``flags`` besides (the browser fixtures' body); skips
    the test when it is not installed. Playwright never downloads a browser here."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless=new", *flags]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's chromium, headless; the test skips when it is not installed."""
    yield from launch_chromium()


def _save_png(path: Path, rgb: object) -> Path:
    from PIL import Image

    Image.fromarray(rgb).save(path)
    return path


def _legend(page: object) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#legend .legend-item",
        "items => items.map(i => ({fraction: i.dataset.fraction, text: i.textContent}))",
    )


def _check_legend(page: object, case: str) -> None:
    items = _legend(page)
    assert items, f"{case}: the legend lists no class"
    total = sum(float(item["fraction"]) for item in items)
    assert abs(total - 1.0) <= 0.01, f"{case}: legend fractions sum to {total}, not 1"
    assert all("%" in item["text"] for item in items), f"{case}: a legend item has no percent"


def _canvas_pixel(page: object, x: int, y: int) -> list[int]:
    return page.evaluate(
        """([x, y]) => Array.from(
            document.getElementById('overlay-canvas').getContext('2d').getImageData(x, y, 1, 1).data
        )""",
        [x, y],
    )


def _canvas_size(page: object) -> list[int]:
    return page.eval_on_selector("#overlay-canvas", "c => [c.width, c.height]")


def _set_opacity(page: object, value: str) -> None:
    page.eval_on_selector(
        "#opacity",
        "(s, v) => { s.value = v; s.dispatchEvent(new Event('input', {bubbles: true})); }",
        value,
    )


def test_demo_page(browser: object, server: str, tmp_path: Path) -> None:
    import skimage.data
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    models = httpx.get(f"{server}/v1/models", timeout=10).json()["models"]
    image_models = {m["name"] for m in models if m["kind"] == "image"}
    video_models = {m["name"] for m in models if m["kind"] == "video"}
    colours = {tuple(c["color"]) for m in models for c in m["classes"]}
    assert image_models and video_models, f"the demo models are not both served: {models}"

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    console_errors: list[str] = []
    # a 4xx answer is logged by the browser itself ("Failed to load resource"): expected here
    page.on(
        "console",
        lambda m: (
            console_errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    segment_requests: list[str] = []
    page.on("request", lambda r: segment_requests.append(r.url) if "/v1/segment" in r.url else None)

    # listening from the start turns the browser's file-chooser interception on before any
    # key press: enabled lazily, it can miss the first chooser
    choosers: list[object] = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))

    page.goto(server + "/")
    expect(page.locator("#model-select")).to_be_enabled()
    assert page.locator("#model-select").input_value() in image_models
    # demo honesty: what the model was trained on, its classes, the way to real weights
    expect(page.locator("#model-card")).to_be_visible()
    expect(page.locator("#model-card-summary")).to_contain_text("synthetic textures")
    expect(page.locator("#model-card-classes")).to_contain_text("stripes")
    expect(page.locator("#model-card-convert")).to_contain_text("ccnet convert")
    expect(page.locator("#model-card-train")).to_contain_text("ccnet train")

    # the drop zone is the first stop for the keyboard and opens the file picker
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "drop-zone"
    page.keyboard.press("Enter")
    deadline = time.monotonic() + 5
    while not choosers and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert choosers, "Enter on the drop zone did not open the file picker"

    # 1. an image through the file picker
    astronaut = _save_png(tmp_path / "astronaut.png", skimage.data.astronaut())
    page.set_input_files("#file-input", str(astronaut))
    expect(page.locator("#status")).to_contain_text("Segmented astronaut.png")
    canvas = page.locator("#overlay-canvas")
    expect(canvas).to_have_attribute("data-drawn", "true")
    expect(canvas).to_be_visible()
    size = _canvas_size(page)
    assert size == [512, 512], f"the overlay canvas is {size}, not the image's 512 × 512"
    assert _canvas_pixel(page, 256, 256)[3] == 255, "the overlay canvas was not drawn"
    _check_legend(page, "image")
    expect(page.locator("#inference-time")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    link = page.locator("#download-mask")
    expect(link).to_be_visible()
    assert link.get_attribute("href").startswith("blob:"), "the mask link is not a blob URL"
    assert link.get_attribute("download").endswith(".png")
    mask_check = page.evaluate(
        """async () => {
            const blob = await (await fetch(document.getElementById('download-mask').href)).blob();
            const head = Array.from(new Uint8Array(await blob.slice(0, 8).arrayBuffer()));
            const bitmap = await createImageBitmap(blob);
            return {type: blob.type, head, width: bitmap.width, height: bitmap.height};
        }"""
    )
    assert mask_check["head"] == [137, 80, 78, 71, 13, 10, 26, 10], "the mask is not a PNG"
    assert (mask_check["width"], mask_check["height"]) == (512, 512)

    # the opacity slider redraws on the client: at 1 the canvas shows pure class colours
    before = len(segment_requests)
    _set_opacity(page, "1")
    expect(canvas).to_have_attribute("data-alpha", "1")
    for x, y in [(10, 10), (256, 256), (400, 100)]:
        pixel = tuple(_canvas_pixel(page, x, y)[:3])
        assert pixel in colours, f"at opacity 1 the canvas pixel ({x}, {y}) is {pixel}"
    _set_opacity(page, "0.5")
    expect(canvas).to_have_attribute("data-alpha", "0.5")
    assert len(segment_requests) == before, "moving the slider sent a request for an image"
    page.screenshot(path=ARTIFACTS / "demo_page_image.png", full_page=True)

    # 2. a file that is no image: a readable sentence, never the raw JSON body
    bogus = tmp_path / "not_an_image.png"
    bogus.write_text("this is plain text, not a PNG\n")
    page.set_input_files("#file-input", str(bogus))
    error = page.locator("#error")
    expect(error).to_be_visible()
    message = page.locator("#error-message").inner_text()
    hint = page.locator("#error-hint").inner_text()
    assert '{"error"' not in message + hint and "{" not in message, f"raw body shown: {message}"
    assert len(message) > 10 and message[0].isupper() and message.endswith("."), message
    assert hint, "no hint for the HTTP status"
    assert error.get_attribute("data-status") in {"400", "415"}, error.get_attribute("data-status")
    page.screenshot(path=ARTIFACTS / "demo_page_error.png", full_page=True)

    # 3. a file dropped on the drop zone (a synthetic drop event carrying the bytes)
    coffee = _save_png(tmp_path / "dropped.png", skimage.data.coffee())
    page.evaluate(
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: 'image/png'}));
            const zone = document.getElementById('drop-zone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, {
                    dataTransfer: transfer, bubbles: true, cancelable: true,
                }));
            }
        }""",
        [base64.b64encode(coffee.read_bytes()).decode(), coffee.name],
    )
    expect(page.locator("#status")).to_contain_text("Segmented dropped.png")
    expect(error).to_be_hidden()
    size = _canvas_size(page)
    assert size == [600, 400], f"the dropped image's overlay is {size}, not 600 × 400"
    _check_legend(page, "dropped image")

    # 4. an animated GIF is a clip: one inference, played and recomposited in the page
    gif = Path(skimage.data.__file__).parent / "no_time_for_that_tiny.gif"
    clip_requests_before = sum("/v1/segment/video" in url for url in segment_requests)
    page.set_input_files("#file-input", str(gif))
    expect(page.locator("#status")).to_contain_text(f"Segmented {gif.name}")
    expect(page.locator("#model-kind")).to_have_text("clip")
    assert page.locator("#model-select").input_value() in video_models
    expect(canvas).to_be_visible()
    _check_legend(page, "clip")
    expect(page.locator("#inference-time")).to_contain_text("ms")
    expect(page.locator("#download-zip")).to_be_visible()
    expect(page.locator("#download-mask")).to_be_hidden()
    # it plays: the frame shown moves on by itself, on both canvases
    shown = {page.eval_on_selector("#overlay-canvas", "c => c.dataset.frame")}
    deadline = time.monotonic() + 10
    while len(shown) < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
        shown.add(page.eval_on_selector("#overlay-canvas", "c => c.dataset.frame"))
    assert len(shown) >= 3, f"the clip overlay does not play: frames shown {shown}"
    assert page.eval_on_selector("#original-frame canvas", "c => c.width > 0")
    page.screenshot(path=ARTIFACTS / "demo_page_clip.png", full_page=True)
    page.emulate_media(color_scheme="dark")
    page.wait_for_timeout(400)  # the colour transitions settle
    page.screenshot(path=ARTIFACTS / "demo_page_clip_dark.png", full_page=True)

    # the opacity recomposites in the page: at 1 every overlay pixel is a class colour
    _set_opacity(page, "1")
    page.eval_on_selector("#opacity", "s => s.dispatchEvent(new Event('change', {bubbles: true}))")
    width, height = _canvas_size(page)
    points = ((width // 4, height // 4), (width // 2, height // 2), (3 * width // 4, height // 3))
    for x, y in points:
        pixel = tuple(_canvas_pixel(page, x, y)[:3])
        assert pixel in colours, f"clip at opacity 1: the canvas pixel ({x}, {y}) is {pixel}"
    _set_opacity(page, "0.5")

    with page.expect_download(timeout=UI_TIMEOUT_MS) as download:
        page.locator("#download-zip").click()
    saved = tmp_path / "masks.zip"
    download.value.save_as(saved)
    assert download.value.suggested_filename.endswith("_masks.zip")
    clip_requests = sum("/v1/segment/video" in url for url in segment_requests)
    assert clip_requests - clip_requests_before == 1, (
        f"the clip was sent {clip_requests - clip_requests_before} times for one upload, "
        "an opacity change and the zip; once is enough"
    )

    # the page's zip holds what the server's output=zip holds: the same mask PNGs, one a frame
    with gif.open("rb") as handle:
        served = httpx.post(
            f"{server}/v1/segment/video",
            params={"model": page.locator("#model-select").input_value(), "output": "zip"},
            files={"video": (gif.name, handle, "image/gif")},
            timeout=120,
        )
    assert served.status_code == 200, served.text
    with zipfile.ZipFile(saved) as page_zip, zipfile.ZipFile(io.BytesIO(served.content)) as ref:
        assert page_zip.testzip() is None, "the page's zip has a corrupt entry"
        assert page_zip.namelist() == ref.namelist(), "the page's zip names other entries"
        for name in ref.namelist():
            if name.endswith(".png"):
                assert page_zip.read(name) == ref.read(name), f"{name} differs from the server's"
        page_meta = json.loads(page_zip.read("clip.json"))
        assert page_meta == json.loads(ref.read("clip.json")), "clip.json differs"

    assert not console_errors, f"the page logged errors: {console_errors}"
    context.close()
