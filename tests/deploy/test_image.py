"""The CPU image, built and run by a real Docker engine (skipped, with the reason, without one).

The container runs the way docker/k8s/ccnet.yaml runs it: the image's own user (uid 10001),
a read-only root file system, no capabilities, no privilege escalation, the manifest's CPU and
memory limits and environment, and the volumes it mounts (/models read-only, /var/cache/ccnet
and /tmp writable). Its /models holds copies of the demo checkpoints and one extra checkpoint.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "docker" / "k8s" / "ccnet.yaml"
ASSETS = ROOT / "inference" / "assets"
EXTRA_MODEL = "ccnet-tiny-extra"
READY_TIMEOUT_S = 240


def _pod() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(K8S.read_text(encoding="utf-8")) if d]
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]


def _run_flags(pod: dict[str, Any], models: Path, cache_volume: str) -> list[str]:
    """`docker run` flags for what the manifest asks of the container."""
    (container,) = pod["containers"]
    security = container["securityContext"]
    flags = []
    if security.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    for capability in security.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", capability]
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    limits = container["resources"]["limits"]
    cores = os.cpu_count() or 1
    flags += ["--cpus", str(min(float(limits["cpu"]), cores))]
    flags += ["--memory", limits["memory"].replace("Gi", "g").replace("Mi", "m")]
    for variable in container.get("env", []):
        if "valueFrom" in variable:  # the API key, from a Secret the manifest requires
            assert variable["valueFrom"]["secretKeyRef"]["optional"] is False
            flags += ["-e", f"{variable['name']}={API_KEY}"]
        else:
            flags += ["-e", f"{variable['name']}={variable['value']}"]
    for mount in container["volumeMounts"]:
        path = mount["mountPath"]
        if path == "/models":
            flags += ["-v", f"{models}:{path}:ro" if mount.get("readOnly") else f"{models}:{path}"]
        elif path == "/var/cache/ccnet":
            flags += ["-v", f"{cache_volume}:{path}"]  # a fresh volume, as an emptyDir
        else:
            flags += ["--tmpfs", path]
    flags += ["--stop-timeout", str(pod["terminationGracePeriodSeconds"])]
    return flags


def _extra_checkpoint(destination: Path) -> None:
    """The demo image checkpoint under another name: a different model to the service."""
    import torch

    checkpoint = torch.load(ASSETS / "ccnet-tiny.pt", map_location="cpu", weights_only=False)
    checkpoint["meta"]["config"]["name"] = EXTRA_MODEL
    torch.save(checkpoint, destination)


API_KEY = "deploy-test-key"  # stands in for the manifest's ccnet-api-key Secret
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Container:
    engine: Any
    name: str
    url: str

    def logs(self) -> str:
        result = self.engine("logs", self.name, check=False, timeout=30)
        return (result.stdout + result.stderr)[-4000:]

    def state(self) -> dict[str, Any]:
        return json.loads(self.engine("inspect", "-f", "{{json .State}}", self.name).stdout)


def _multipart(field: str, filename: str, data: bytes, media_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: {media_type}\r\n\r\n'
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def _photo() -> tuple[np.ndarray, bytes]:
    from skimage import data

    photo = data.astronaut()
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    return photo, buffer.getvalue()


def _clip() -> Path:
    """A real animated GIF that ships with scikit-image."""
    import skimage.data

    return Path(skimage.data.__file__).parent / "no_time_for_that_tiny.gif"


@pytest.fixture(scope="module")
def container(
    engine: Any, cpu_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    models = tmp_path_factory.mktemp("models")
    for asset in ASSETS.glob("*.pt"):
        shutil.copyfile(asset, models / asset.name)
    _extra_checkpoint(models / f"{EXTRA_MODEL}.pt")
    models.chmod(0o755)  # the container's uid 10001 reads them
    for item in models.iterdir():
        item.chmod(0o644)
    name = f"ccnet-test-{os.getpid()}"
    volume = f"{name}-cache"
    engine("rm", "-f", name, check=False)
    engine(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        "127.0.0.1::8000",
        *_run_flags(_pod(), models, volume),
        cpu_image,
    )
    try:
        address = engine("port", name, "8000/tcp").stdout.split()[0]
        running = Container(engine, name, f"http://{address}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        status: object = None
        while time.monotonic() < deadline:
            if not running.state()["Running"]:
                pytest.fail(f"the container exited:\n{running.logs()}")
            try:
                status = httpx.get(f"{running.url}/readyz", timeout=3).status_code
            except httpx.HTTPError as error:  # not listening yet
                status = type(error).__name__
            if status == 200:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"/readyz {status} after {READY_TIMEOUT_S} s:\n{running.logs()}")
        yield running
    finally:
        engine("rm", "-f", name, check=False)
        engine("volume", "rm", "-f", volume, check=False)


def test_runs_as_its_non_root_user_on_a_read_only_root(container: Container) -> None:
    engine = container.engine
    config = json.loads(engine("inspect", "-f", "{{json .Config}}", container.name).stdout)
    assert config["User"] == "10001:10001", config["User"]
    assert engine("exec", container.name, "id", "-u").stdout.strip() == "10001"
    root = engine("exec", container.name, "touch", "/opt/venv/probe", check=False)
    assert root.returncode != 0 and "Read-only file system" in root.stderr, root
    # the volumes the manifest mounts: the cache and /tmp writable by uid 10001, /models not
    for folder in ("/var/cache/ccnet", "/tmp"):
        probe = engine("exec", container.name, "touch", f"{folder}/probe", check=False)
        assert probe.returncode == 0, f"{folder} is not writable by uid 10001: {probe.stderr}"
    models = engine("exec", container.name, "touch", "/models/probe", check=False)
    assert models.returncode != 0, "/models should be mounted read-only"


def test_segments_a_photograph(container: Container) -> None:
    photo, png = _photo()
    response = httpx.post(
        f"{container.url}/v1/segment",
        files={"image": ("astronaut.png", png, "image/png")},
        headers=AUTH,
        timeout=120,
    )
    assert response.status_code == 200, response.text[:2000]
    mask = Image.open(io.BytesIO(response.content))
    assert mask.format == "PNG" and mask.mode in ("P", "L"), mask.mode
    assert mask.size == (photo.shape[1], photo.shape[0]), mask.size
    listed = httpx.get(f"{container.url}/v1/models", headers=AUTH, timeout=10).json()["models"]
    model = next(m for m in listed if m["name"] == response.headers["x-model"])
    assert int(np.asarray(mask).max()) < len(model["classes"])


def test_segments_a_clip(container: Container) -> None:
    path = _clip()
    with Image.open(path) as gif:
        frames, size = gif.n_frames, gif.size
    response = httpx.post(
        f"{container.url}/v1/segment/video",
        files={"video": (path.name, path.read_bytes(), "image/gif")},
        headers=AUTH,
        timeout=300,
    )
    assert response.status_code == 200, response.text[:2000]
    assert response.headers["content-type"].startswith("application/zip")
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        masks = sorted(n for n in archive.namelist() if n.endswith(".png"))
        assert len(masks) == frames, (len(masks), frames)
        first = Image.open(io.BytesIO(archive.read(masks[0])))
    assert first.size == size, (first.size, size)


def test_models_folder_is_served(container: Container) -> None:
    listed = httpx.get(f"{container.url}/v1/models", headers=AUTH, timeout=10).json()["models"]
    names = {m["name"] for m in listed}
    assert names == {"ccnet-tiny", "ccnet3d-tiny", EXTRA_MODEL}, names
    _, png = _photo()
    response = httpx.post(
        f"{container.url}/v1/segment",
        params={"model": EXTRA_MODEL},
        files={"image": ("astronaut.png", png, "image/png")},
        headers=AUTH,
        timeout=120,
    )
    assert response.status_code == 200 and response.headers["x-model"] == EXTRA_MODEL


def test_docker_healthcheck_reaches_healthy(container: Container) -> None:
    """The image's own HEALTHCHECK, on its own schedule (first probe one interval in)."""
    config = json.loads(
        container.engine("inspect", "-f", "{{json .Config.Healthcheck}}", container.name).stdout
    )
    interval_s = config["Interval"] / 1e9
    timeout_s = config["Timeout"] / 1e9
    deadline = time.monotonic() + 2 * (interval_s + timeout_s) + 10
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = container.state().get("Health") or {}
        if health.get("Status") in ("healthy", "unhealthy"):
            break
        time.sleep(1)
    assert health.get("Status") == "healthy", f"{health}\n{container.logs()}"
    assert health["Log"][-1]["ExitCode"] == 0, health["Log"][-1]


def test_sigterm_finishes_accepted_requests_then_exits_0(container: Container) -> None:
    """`docker stop` sends SIGTERM: requests accepted before it are answered in full, then
    the server exits 0 within the manifest's grace period (after it, Docker's SIGKILL would
    make the exit status 137)."""
    grace_s = _pod()["terminationGracePeriodSeconds"]
    host, port = container.url.removeprefix("http://").rsplit(":", 1)
    _, png = _photo()
    clip = _clip()
    # enough work that some of it is still running when the signal comes (a clip takes
    # seconds on a CPU; the images queue behind each other), within the queues' limits and
    # one client's share of them (one clip at a time per client: service.tenancy)
    video = ("/v1/segment/video", _multipart("video", clip.name, clip.read_bytes(), "image/gif"))
    uploads = [video]
    uploads += [("/v1/segment", _multipart("image", "astronaut.png", png, "image/png"))] * 14
    connections = []
    for path, (body, media_type) in uploads:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        connection.request("POST", path, body=body, headers={"Content-Type": media_type, **AUTH})
        connections.append((path, connection))
    time.sleep(0.2)  # every request read by the server (loopback; bodies of at most 1 MB)
    answered_before = sum(
        bool(select.select([c.sock], [], [], 0)[0]) for _, c in connections if c.sock
    )
    signalled = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        stop = pool.submit(
            container.engine, "stop", "-t", str(grace_s), container.name, timeout=grace_s + 60
        )
        results = []
        for path, connection in connections:
            response = connection.getresponse()
            results.append((path, response.status, response.read()))
            connection.close()
        stop.result()
    stopped_s = time.monotonic() - signalled
    assert answered_before < len(connections), "all answered before SIGTERM: nothing was drained"
    statuses = [(path, status) for path, status, _ in results]
    assert all(status == 200 for _, status in statuses), (statuses, container.logs())
    for path, _, body in results:
        if path == "/v1/segment":
            assert Image.open(io.BytesIO(body)).format == "PNG"
        else:
            assert zipfile.ZipFile(io.BytesIO(body)).testzip() is None
    state = container.state()
    assert not state["Running"] and not state["OOMKilled"], state
    assert state["ExitCode"] == 0, (state, container.logs())
    print(f"\nSIGTERM: {len(results)} accepted requests answered, exit 0 after {stopped_s:.1f} s")
