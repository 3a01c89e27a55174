"""A Docker engine for the deployment tests, and the CPU image built on it.

Where no daemon answers (not root, no cgroups, no docker.io) every test that needs one skips
with the reason; `.ci/run` installs Debian's docker.io and starts dockerd first
(`.ci/docker-engine.sh`). Registry images cannot be pulled on the project's machines, so the
image is built on a local Debian bookworm base made with debootstrap (cached by its tag), with
the CPU torch wheel of pip's find-links folder given to the build through docker/wheels.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_TAG = "ccnet-test:cpu"
# The base's recipe; its hash (with the CA bundle's) names the cached image.
BASE_SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
WHEELS = ROOT / "docker" / "wheels"  # the Dockerfile's default CCNET_WHEELS

# figures for the terminal summary (and BENCHMARKS.md)
FIGURES: dict[str, str] = {}


@dataclass(frozen=True)
class Engine:
    """The docker CLI that talks to a running daemon and can build with BuildKit."""

    cli: str
    server: str

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.cli, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
            **kwargs,  # type: ignore[arg-type]
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"docker {' '.join(args)[:300]}: exit {result.returncode}\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def has_image(self, tag: str) -> bool:
        return self("image", "inspect", tag, check=False, timeout=30).returncode == 0


def _cli_candidates() -> list[str]:
    """docker CLIs, the one packaged with dockerd first: a newer CLI without the buildx
    plugin refuses BuildKit builds, while Docker 20.10's CLI has BuildKit built in."""
    found = []
    dockerd = shutil.which("dockerd")
    if dockerd:
        found.append(str(Path(dockerd).resolve().parent.parent / "bin" / "docker"))
    found += [p for p in (shutil.which("docker"),) if p]
    return [p for i, p in enumerate(found) if Path(p).is_file() and p not in found[:i]]


def _builds_with_buildkit(cli: str) -> bool:
    buildx = subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=30)
    if buildx.returncode == 0:
        return True
    version = subprocess.run(
        [cli, "version", "--format", "{{.Client.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    major = re.match(r"(\d+)\.", version)
    return major is not None and int(major.group(1)) < 23  # BuildKit in the CLI itself


@functools.cache
def find_engine() -> Engine | str:
    """A reachable Docker daemon, or why there is none."""
    candidates = _cli_candidates()
    if not candidates:
        return "no docker CLI on PATH (.ci/docker-engine.sh installs docker.io)"
    reasons = []
    for cli in candidates:
        result = subprocess.run(
            [cli, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no answer"])[-1]
            reasons.append(f"{cli}: {last}")
        elif not _builds_with_buildkit(cli):
            reasons.append(f"{cli}: cannot build with BuildKit (no buildx plugin)")
        else:
            return Engine(cli, result.stdout.strip())
    return (
        "no usable Docker daemon (" + "; ".join(reasons) + "); as root, .ci/run starts one "
        "with .ci/docker-engine.sh"
    )


@pytest.fixture(scope="session")
def engine() -> Engine:
    """A reachable Docker daemon, else a skip that says why (never a silent pass)."""
    found = find_engine()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="session")
def no_engine() -> None:
    """For the engine-free stand-ins of the image tests: skipped where an engine runs them."""
    if isinstance(find_engine(), Engine):
        pytest.skip(
            "a Docker engine is available: tests/deploy/test_image.py builds and runs "
            "the image itself"
        )


def _base_recipe_tag() -> str:
    digest = hashlib.sha256(f"{BASE_SUITE} {BASE_PACKAGES} {BASE_ENV}".encode())
    if HOST_CA_BUNDLE.is_file():
        digest.update(HOST_CA_BUNDLE.read_bytes())
    return f"ccnet-test-base:{BASE_SUITE}-{digest.hexdigest()[:12]}"


@pytest.fixture(scope="session")
def base_image(engine: Engine) -> str:
    """A Debian bookworm image with Python 3.11 made from Debian's packages, since no
    registry base can be pulled here; the host's CA bundle goes in, so pip inside a build
    reaches the package index exactly as the host does. Built once, then reused by tag."""
    tag = _base_recipe_tag()
    if engine.has_image(tag):
        FIGURES["base image"] = f"{tag} (cached)"
        return tag
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None or os.geteuid() != 0:
        pytest.skip(
            "no base image can be made: debootstrap (as root) is needed for a local "
            "bookworm base where registry images cannot be pulled (.ci/docker-engine.sh)"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ccnet-rootfs-") as folder:
        rootfs = Path(folder) / "rootfs"
        result = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                BASE_SUITE,
                str(rootfs),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            pytest.fail(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        if HOST_CA_BUNDLE.is_file():
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        changes = [arg for env in BASE_ENV for arg in ("--change", f"ENV {env}")]
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            engine("import", *changes, "-", tag, stdin=tar.stdout, timeout=600)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(timeout=60)
    FIGURES["base image"] = f"{tag}: debootstrap + import {time.monotonic() - started:.0f} s"
    return tag


def _torch_wheel() -> Path | None:
    """The pinned CPU torch wheel in pip's find-links folders, where this machine has one."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    folders = re.findall(r"find-links='([^']*)'", config)
    folders += os.environ.get("PIP_FIND_LINKS", "").split()
    pattern = f"torch-{pin.split('==')[1]}+cpu-cp3{sys.version_info.minor}-*.whl"
    for folder in folders:
        for wheel in sorted(Path(folder).glob(pattern)) if Path(folder).is_dir() else []:
            return wheel
    return None


@pytest.fixture(scope="session")
def cpu_image(engine: Engine, base_image: str) -> str:
    """docker/Dockerfile.cpu built on the local base; torch from the local wheel where there
    is one (download.pytorch.org is out of reach there), else from the image's index."""
    args = ["--build-arg", f"BASE_IMAGE={base_image}"]
    wheel = _torch_wheel()
    placed: Path | None = None
    if wheel is not None:
        placed = WHEELS / wheel.name
        if not placed.exists():
            try:
                os.link(wheel, placed)
            except OSError:
                shutil.copyfile(wheel, placed)
        else:
            placed = None  # someone's own wheel: leave it
        args += ["--build-arg", "CCNET_TORCH_INDEX="]
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy"):
        if proxy in os.environ:
            args += ["--build-arg", f"{proxy}={os.environ[proxy]}"]
    previous = engine("image", "inspect", "-f", "{{.Id}}", IMAGE_TAG, check=False).stdout.strip()
    started = time.monotonic()
    try:
        result = engine(
            "build",
            "--network",
            "host",
            "--progress",
            "plain",
            "-f",
            "docker/Dockerfile.cpu",
            *args,
            "-t",
            IMAGE_TAG,
            ".",
            cwd=ROOT,
            timeout=1800,
        )
    finally:
        if placed is not None:
            placed.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    current = engine("image", "inspect", "-f", "{{.Id}}", IMAGE_TAG).stdout.strip()
    if previous and previous != current:  # the last run's image, untagged now: no pile-up
        engine("image", "rm", previous, check=False)
    steps = len(re.findall(r"^#\d+ \[", result.stderr, re.MULTILINE))
    cached = len(re.findall(r"^#\d+ CACHED", result.stderr, re.MULTILINE))
    size = int(engine("image", "inspect", "-f", "{{.Size}}", IMAGE_TAG).stdout)
    FIGURES["ccnet image"] = (
        f"{IMAGE_TAG}: built in {seconds:.0f} s ({cached} of {steps} steps cached), "
        f"{size / 1e9:.2f} GB, on {base_image}, Docker {engine.server}"
    )
    return IMAGE_TAG


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the build figures (a timed assertion would be flaky; the numbers are reported)."""
    if FIGURES:
        terminalreporter.section("deploy figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
