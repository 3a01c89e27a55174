"""`docker compose up` of the default service, with Debian's docker-compose 1.29 (skipped, with
the reason, without an engine or without docker-compose).

docker-compose 1.29 reads this file as it is (the Compose specification without `version:`,
profiles, `deploy.resources`, healthcheck `start_period`, `depends_on` conditions). What it
does not run here is the `scale` and `monitoring` profiles: their nginx and Prometheus images
come from Docker Hub, which these machines cannot reach; test_proxy.py runs both of their
config files with Debian's nginx and promtool instead, and test_docker.py checks the wiring
against the Compose specification's schema.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Compose:
    """docker-compose on the repository's file, with the test image and a free port."""

    def __init__(self, binary: str, project: str, override: Path, port: int) -> None:
        self.binary, self.project, self.override, self.port = binary, project, override, port

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        command = [self.binary, "-p", self.project, "-f", str(COMPOSE), "-f", str(self.override)]
        return subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env={**os.environ, "CCNET_PUBLISH_PORT": str(self.port)},
        )


@pytest.fixture(scope="module")
def stack(
    engine: Any, cpu_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Compose, str]]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not found (apt-get install docker-compose; .ci/run does)")
    override = tmp_path_factory.mktemp("compose") / "test-image.yml"
    # the image the test built (on the local base) in place of a `docker compose build`
    override.write_text(yaml.safe_dump({"services": {"ccnet": {"image": cpu_image}}}))
    compose = Compose(binary, f"ccnettest{os.getpid()}", override, _free_port())
    try:
        up = compose("up", "-d", "--no-build")
        assert up.returncode == 0, up.stdout + up.stderr
        containers = engine(
            "ps", "-aq", "--filter", f"label=com.docker.compose.project={compose.project}"
        ).stdout.split()
        assert len(containers) == 1, f"the default profile is one service, got {containers}"
        (container,) = containers
        url = f"http://127.0.0.1:{compose.port}"
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                logs = compose("logs", "--no-color", "--tail", "50").stdout
                pytest.fail(f"compose service not ready on {url}:\n{logs}")
            time.sleep(0.5)
        yield compose, container
    finally:
        down = compose("down", "-v", "--remove-orphans", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


def test_default_service_runs_as_the_file_says(stack: tuple[Compose, str], engine: Any) -> None:
    compose, container = stack
    service = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["ccnet"]
    inspected = json.loads(engine("inspect", container).stdout)[0]
    assert inspected["Config"]["Labels"]["com.docker.compose.service"] == "ccnet"
    host = inspected["HostConfig"]
    # deploy.resources: limits and reservations reach the container (compose 1.29 applies them)
    assert host["NanoCpus"] == 2 * 10**9, host["NanoCpus"]  # CCNET_CPUS unset: 2
    memory = service["deploy"]["resources"]["limits"]["memory"]
    assert host["Memory"] == int(memory.rstrip("G")) << 30, (host["Memory"], memory)
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    env = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
    assert env["CCNET_THREADS"] == "2" and env["CCNET_MODEL_DIR"] == "/models"
    mounts = {m["Destination"]: m for m in inspected["Mounts"]}
    for destination, volume in (("/models", "ccnet-models"), ("/var/cache/ccnet", "ccnet-cache")):
        assert mounts[destination]["Type"] == "volume"
        assert mounts[destination]["Name"] == f"{compose.project}_{volume}"
    health = inspected["Config"]["Healthcheck"]
    assert health["Test"] == service["healthcheck"]["test"]
    assert inspected["Config"]["User"] == "10001:10001"


def test_default_service_serves_the_demo_models(stack: tuple[Compose, str]) -> None:
    """An empty ccnet-models volume: the bundled demo models, one photograph segmented."""
    from skimage import data

    compose, _ = stack
    url = f"http://127.0.0.1:{compose.port}"
    names = {m["name"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["models"]}
    assert names == {"ccnet-tiny", "ccnet3d-tiny"}, names
    photo = data.coffee()
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    response = httpx.post(
        f"{url}/v1/segment",
        files={"image": ("coffee.jpg", buffer.getvalue(), "image/jpeg")},
        timeout=120,
    )
    assert response.status_code == 200, response.text[:1000]
    assert Image.open(io.BytesIO(response.content)).size == (photo.shape[1], photo.shape[0])


def test_compose_stop_is_graceful(stack: tuple[Compose, str], engine: Any) -> None:
    """`docker compose stop`: SIGTERM, then exit 0 within stop_grace_period (after it,
    Docker's SIGKILL would make the exit status 137)."""
    compose, container = stack
    started = time.monotonic()
    stopped = compose("stop", timeout=90)
    seconds = time.monotonic() - started
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    state = json.loads(engine("inspect", "-f", "{{json .State}}", container).stdout)
    assert not state["Running"] and state["ExitCode"] == 0, state
    print(f"\ncompose stop: exit 0 after {seconds:.1f} s")
