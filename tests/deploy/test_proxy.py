"""docker/nginx.conf and docker/prometheus.yml, run by the real programs (Debian's nginx and
promtool; each test skips, naming the package, where its program is missing).

nginx runs the config file itself with two substitutions, both about where it runs, not how it
proxies: the replicas' address (`server ccnet-replica:8000 resolve;`: a name of compose's network,
re-resolved through Docker's DNS, which takes nginx 1.27.3 or later, as in compose's nginx image)
becomes the local replicas' addresses, and `listen 80` a free local port. Everything else
(least_conn, keepalive, proxy_next_upstream, body limits, headers, timeouts) is the file's.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "docker" / "nginx.conf"
PROMETHEUS = ROOT / "docker" / "prometheus.yml"
_SERVER_LINE = re.compile(r"^([ \t]*)server[ \t]+ccnet-replica:8000[ \t]+resolve;[ \t]*$", re.M)
_LISTEN_LINE = re.compile(r"^([ \t]*)listen[ \t]+80;[ \t]*$", re.M)
REPLICA_IMAGE_LIMIT = 1 << 20  # CCNET_MAX_IMAGE_BYTES of the test replicas


def _program(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if found is None:
        pytest.skip(f"{name} not found (apt-get install {package}; .ci/docker-engine.sh does)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render(upstreams: list[str], port: int) -> str:
    """docker/nginx.conf for local upstreams and a local port; nothing else changes."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert len(_SERVER_LINE.findall(text)) == 1, "nginx.conf: one `server ccnet-replica:8000`"
    assert len(_LISTEN_LINE.findall(text)) == 1, "nginx.conf: one `listen 80;`"
    text = _SERVER_LINE.sub(lambda m: "\n".join(f"{m[1]}server {u};" for u in upstreams), text)
    return _LISTEN_LINE.sub(lambda m: f"{m[1]}listen 127.0.0.1:{port};", text)


@dataclass
class Nginx:
    """nginx with docker/nginx.conf as its conf.d file, inside a minimal main config that
    logs which upstream answered each request."""

    binary: str
    prefix: Path
    upstreams: list[str]
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    def write(self) -> Path:
        for folder in ("conf.d", "tmp", "logs"):
            (self.prefix / folder).mkdir(parents=True, exist_ok=True)
        (self.prefix / "tmp").chmod(0o777)  # the worker's user writes request bodies there
        (self.prefix / "conf.d" / "ccnet.conf").write_text(render(self.upstreams, self.port))
        temp = "".join(
            f"    {kind}_temp_path {self.prefix}/tmp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        main = self.prefix / "nginx.conf"
        main.write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"worker_processes 1;\npid {self.prefix}/nginx.pid;\n"
            f"error_log {self.prefix}/logs/error.log info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            "    log_format upstreams '$request_method $uri $status $upstream_addr "
            "$upstream_status';\n"
            f"    access_log {self.prefix}/logs/access.log upstreams;\n"
            f"{temp}"
            f"    include {self.prefix}/conf.d/ccnet.conf;\n"
            "}\n"
        )
        return main

    def test_config(self) -> subprocess.CompletedProcess[str]:
        main = self.write()
        return subprocess.run(
            [self.binary, "-t", "-p", str(self.prefix), "-c", str(main), "-e", "stderr"],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def __enter__(self) -> Nginx:
        checked = self.test_config()
        assert checked.returncode == 0, checked.stderr
        self.process = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.prefix),
                "-c",
                str(self.prefix / "nginx.conf"),
                "-e",
                "stderr",
                "-g",
                "daemon off;",
            ],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/nginx-health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        pytest.fail(f"nginx did not start:\n{self.error_log()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful, like `nginx -s quit`
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def access(self) -> list[list[str]]:
        """(method, uri, status, upstream addresses, upstream statuses) per request."""
        path = self.prefix / "logs" / "access.log"
        rows = []
        for line in path.read_text().splitlines():
            method, uri, status, rest = line.split(" ", 3)
            # "$upstream_addr $upstream_status", each a ", "-separated list on retries
            addresses, statuses = re.fullmatch(
                r"(.*?) ((?:\d{3}|-)(?:, (?:\d{3}|-))*)", rest
            ).groups()
            rows.append([method, uri, status, addresses, statuses])
        return rows


# ----------------------------------------------------------------------------- configs


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    """`nginx -t`: every directive and parameter of the file as Debian's nginx reads it."""
    nginx = Nginx(_program("nginx", "nginx"), tmp_path, ["127.0.0.1:9", "127.0.0.1:10"])
    result = nginx.test_config()
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
    # the file's own limits stay above the service's defaults, so the service answers 413
    from ccnet.service.core.config import Settings

    size = re.search(r"client_max_body_size\s+(\d+)m;", NGINX_CONF.read_text()).group(1)
    defaults = Settings()
    assert int(size) << 20 > max(defaults.max_image_bytes, defaults.max_video_bytes), size


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = _program("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "SUCCESS" in result.stdout + result.stderr, (
        result.stdout + result.stderr
    )


# ----------------------------------------------------------------------------- traffic


@dataclass
class Replica:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _start_replica(folder: Path) -> Replica:
    port = _free_port()
    env = {
        **os.environ,
        "CCNET_HOST": "127.0.0.1",
        "CCNET_PORT": str(port),
        "CCNET_WORKERS": "1",
        "CCNET_THREADS": "1",
        "CCNET_INFERENCE_WORKERS": "1",
        "CCNET_MAX_IMAGE_BYTES": str(REPLICA_IMAGE_LIMIT),
        "CCNET_CACHE_DIR": str(folder / "cache"),
        "CCNET_LOG_FORMAT": "text",
    }
    env.pop("CCNET_MODEL_DIR", None)
    env.pop("CCNET_MODELS", None)
    log = folder / f"replica-{port}.log"
    ccnet = Path(sys.executable).parent / "ccnet"
    with log.open("wb") as out:
        process = subprocess.Popen([str(ccnet), "serve"], env=env, stdout=out, stderr=out)
    return Replica(port, process, log)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    """Two real `ccnet serve` replicas on 127.0.0.1 (the demo models)."""
    _program("nginx", "nginx")
    folder = tmp_path_factory.mktemp("replicas")
    started = [_start_replica(folder), _start_replica(folder)]
    try:
        deadline = time.monotonic() + 240
        for replica in started:
            while True:
                if replica.process.poll() is not None:
                    pytest.fail(f"replica exited:\n{replica.log.read_text()[-3000:]}")
                try:
                    url = f"http://{replica.address}/readyz"
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"replica not ready:\n{replica.log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGCONT)
                replica.process.terminate()
        for replica in started:
            try:
                replica.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()


class _Overloaded(http.server.BaseHTTPRequestHandler):
    """A replica that is full: every request gets the service's 503 with Retry-After. (A real
    replica says this only while starting or overloaded, too briefly to aim a test at.)"""

    hits: list[str]

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.hits.append(self.command)
        body = json.dumps(
            {"error": {"code": "overloaded", "message": "the queue is full; retry later"}}
        ).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815  (http.server's method names)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def overloaded() -> Iterator[tuple[str, list[str]]]:
    """(address, methods it was asked) of a replica answering 503."""
    hits: list[str] = []
    handler = type("Handler", (_Overloaded,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def _png() -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.coffee()).save(buffer, format="PNG")
    assert buffer.tell() < REPLICA_IMAGE_LIMIT
    return buffer.getvalue()


def _segment(url: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/segment", files={"image": ("coffee.png", _png(), "image/png")}, timeout=timeout
    )


@pytest.mark.slow
def test_least_connections(replicas: list[Replica], tmp_path: Path) -> None:
    """With a request held on one replica, new requests all go to the other one (round robin
    would send every second one to the busy replica)."""
    busy, free = replicas
    with (
        Nginx(_program("nginx", "nginx"), tmp_path, [r.address for r in replicas]) as nginx,
        ThreadPoolExecutor(4) as pool,
    ):
        busy.process.send_signal(signal.SIGSTOP)  # its requests wait: connections stay open
        try:
            held = []
            for _ in range(4):  # until nginx has sent one request to the stopped replica
                future = pool.submit(_segment, nginx.url, 120)
                try:
                    assert future.result(timeout=2).status_code == 200
                except TimeoutError:
                    held.append(future)
                    break
            assert held, "no request reached the stopped replica"
            answered = [_segment(nginx.url, timeout=20) for _ in range(6)]
        finally:
            busy.process.send_signal(signal.SIGCONT)
        assert held[0].result(timeout=120).status_code == 200
    assert [r.status_code for r in answered] == [200] * 6
    rows = nginx.access()
    held_rows = [r for r in rows if r[3] == busy.address]
    assert len(held_rows) == 1, rows  # the held request, logged last, when it completed
    assert rows[-1] == held_rows[0], rows
    tail = rows[-7:-1]  # the six sent while it was held
    assert all(r[3] == free.address and r[2] == "200" for r in tail), rows


@pytest.mark.slow
def test_503_falls_through_to_the_other_replica(
    replicas: list[Replica], overloaded: tuple[str, list[str]], tmp_path: Path
) -> None:
    """POSTs too (segmenting has no side effects): the client never sees a replica's 503
    while another replica can answer."""
    full, hits = overloaded
    with Nginx(_program("nginx", "nginx"), tmp_path, [full, replicas[0].address]) as nginx:
        responses = [_segment(nginx.url) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 6, [r.text[:200] for r in responses]
    assert "POST" in hits, "nginx never tried the overloaded replica"
    retried = [r for r in nginx.access() if r[4] == "503, 200"]
    assert retried and all(r[3] == f"{full}, {replicas[0].address}" for r in retried)


@pytest.mark.slow
def test_503_everywhere_reaches_the_client_with_retry_after(
    overloaded: tuple[str, list[str]], tmp_path: Path
) -> None:
    full, hits = overloaded
    with Nginx(_program("nginx", "nginx"), tmp_path, [full, full]) as nginx:
        response = _segment(nginx.url)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "overloaded"
    assert hits == ["POST", "POST"], hits  # proxy_next_upstream_tries 2


@pytest.mark.slow
def test_oversized_upload_gets_the_services_json_413(
    replicas: list[Replica], tmp_path: Path
) -> None:
    """nginx's own limit is above the service's, so the service answers, with its JSON."""
    body = os.urandom(REPLICA_IMAGE_LIMIT + 1)
    with Nginx(_program("nginx", "nginx"), tmp_path, [r.address for r in replicas]) as nginx:
        response = httpx.post(
            f"{nginx.url}/v1/segment",
            files={"image": ("big.png", body, "image/png")},
            timeout=60,
        )
    assert response.status_code == 413, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] and error["message"], error
    assert nginx.access()[-1][3] in {r.address for r in replicas}


@pytest.mark.slow
def test_a_live_session_goes_through_the_proxy(replicas: list[Replica], tmp_path: Path) -> None:
    """WS /v1/stream through docker/nginx.conf: the upgrade reaches a replica, a frame comes
    back as a mask, and the service's own close (1000 after ``end``) reaches the client."""
    import asyncio

    websockets = pytest.importorskip("websockets")

    async def session(url: str) -> tuple[list[object], int | None]:
        async with websockets.connect(url, subprotocols=["ccnet.v1"]) as ws:
            assert ws.subprotocol == "ccnet.v1"
            messages: list[object] = [json.loads(await ws.recv())]
            await ws.send(_png())
            await ws.send(json.dumps({"type": "end"}))
            async for message in ws:
                messages.append(message if isinstance(message, bytes) else json.loads(message))
            return messages, ws.close_code

    with Nginx(_program("nginx", "nginx"), tmp_path, [r.address for r in replicas]) as nginx:
        url = nginx.url.replace("http", "ws", 1) + "/v1/stream?model=ccnet3d-tiny"
        messages, code = asyncio.run(session(url))
    assert messages[0]["type"] == "ready", messages[0]
    assert messages[1]["type"] == "mask" and messages[1]["frame"] == 0
    assert Image.open(io.BytesIO(messages[2])).format == "PNG"
    assert messages[-1]["type"] == "end" and messages[-1]["processed"] == 1
    assert code == 1000
