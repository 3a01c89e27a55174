"""Deployment recipes, checked without a Docker engine.

* Both Dockerfiles pass hadolint and have the shape the README promises (pinned bases, one
  install script, non-root, health check, volumes, the plugin for the GPU image).
* docker-compose.yml validates against the Compose specification and wires what it should.
* Every file the README's "Deploying" section names exists, and its `ccnet` command lines parse.
* The Kubernetes probes point at routes the app really serves.
* The recipe itself (slow), only where no Docker engine runs (test_image.py builds and runs
  the image where one does): the CPU image's build steps, replayed from the Dockerfile into a
  fresh virtual environment, then its ENTRYPOINT/CMD/ENV started and a photograph segmented.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
COMPOSE = ROOT / "docker-compose.yml"
K8S = DOCKER / "k8s" / "ccnet.yaml"
VOLUMES = ("/models", "/var/cache/ccnet")
# A pinned requirement (name==version): pins live in pyproject.toml only.
_PIN = re.compile(r"\b[A-Za-z][\w.-]*==\d")


# ----------------------------------------------------------------------------- helpers


def _tool(name: str) -> str:
    """A dev tool from the interpreter's environment (pyproject's dev extra), else PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found; it is in pyproject's dev extra (make setup)")
    return found


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per Dockerfile instruction, continuations joined, comments out."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, inside continuations too
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions per build stage, each list starting with its FROM (global ARGs apart)."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions(path):
        if keyword == "FROM":
            stages.append([])
        if not stages:
            assert keyword == "ARG", f"{path.name}: {keyword} before the first FROM"
            continue
        stages[-1].append((keyword, args))
    return stages


def _global_args(path: Path) -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults (what FROM lines may use)."""
    values: dict[str, str] = {}
    for keyword, args in _instructions(path):
        if keyword == "FROM":
            break
        key, _, value = args.partition("=")
        values[key] = value.strip('"')
    return values


def _stage(path: Path, name: str) -> list[tuple[str, str]]:
    """The stage `FROM ... AS name`."""
    found = [s for s in _stages(path) if s[0][1].split()[-1] == name]
    assert len(found) == 1, f"{path.name}: expected one stage named {name}"
    return found[0]


def _base(path: Path, stage: list[tuple[str, str]]) -> str:
    """A stage's FROM image with the global ARG defaults filled in (a normal build's)."""
    image = stage[0][1].split()[0]
    for key, value in _global_args(path).items():
        image = image.replace(f"${{{key}}}", value).replace(f"${key}", value)
    return image


def _assignments(stage: list[tuple[str, str]], keyword: str) -> dict[str, str]:
    """ENV or ARG KEY=VALUE pairs of a stage."""
    values: dict[str, str] = {}
    for kw, args in stage:
        if kw == keyword:
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                values[key] = value
    return values


def _one(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in stage if kw == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def _healthcheck_command(stage: list[tuple[str, str]]) -> list[str]:
    _options, sep, command = _one(stage, "HEALTHCHECK").partition("CMD ")
    assert sep, "HEALTHCHECK has no CMD"
    return json.loads(command)


def _copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from=)."""
    copies = []
    for kw, args in stage:
        if kw != "COPY":
            continue
        tokens = shlex.split(args)
        if any(t.startswith("--from=") for t in tokens):
            continue
        tokens = [t for t in tokens if not t.startswith("--")]
        copies.append((tokens[:-1], tokens[-1]))
    return copies


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _glob_regex(line.lstrip("!").strip("/"))))
    return rules


def _ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def _extras(pyproject: dict, names: list[str]) -> set[str]:
    """Requirement names an install with these extras pulls in (self-references followed)."""
    project = pyproject["project"]
    optional = project["optional-dependencies"]
    found: set[str] = {re.split(r"[\s=<>!~;\[]", d)[0].lower() for d in project["dependencies"]}
    todo, seen = list(names), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"extra {extra!r} is not in pyproject.toml"
        for requirement in optional[extra]:
            name = re.split(r"[\s=<>!~;\[]", requirement)[0].lower()
            if name == project["name"]:
                todo.extend(re.search(r"\[(.*)\]", requirement).group(1).split(","))
            else:
                found.add(name)
    return found


def _deploying_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Deploying\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Deploying' section"
    return match.group(1)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _unset(value: str) -> str:
    """A compose value as interpolated with its variables unset (`${VAR:-default}`)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def _k8s() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(K8S.read_text(encoding="utf-8")) if doc]


@functools.cache
def _app_client() -> Any:
    from fastapi.testclient import TestClient

    from ccnet.service.main import create_app

    # no `with`: the lifespan (model loading) never runs, the routes answer all the same
    return TestClient(create_app())


def _assert_served(path: str) -> None:
    """GET path reaches a real route of the app (a 503 from /readyz before loading counts);
    the contract's paths while service/main.py does not exist yet."""
    if not (ROOT / "service" / "main.py").exists():
        assert path in ("/healthz", "/readyz", "/metrics"), path
        return
    response = _app_client().get(path)
    assert response.status_code in (200, 503), f"GET {path}: {response.status_code}"


# ----------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_clean(kind: str) -> None:
    """No finding at any level, style included (an ignore needs a reason comment beside it)."""
    path = DOCKERFILES[kind]
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"hadolint {path.name}:\n{result.stdout}{result.stderr}"
    )
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert (
                number > 0
                and lines[number - 1].startswith("#")
                and "hadolint" not in lines[number - 1]
            ), f"{path.name}:{number + 1}: an ignored hadolint rule needs a reason comment above"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_shape(kind: str) -> None:
    path = DOCKERFILES[kind]
    stages = _stages(path)
    assert len(stages) >= 2, f"{path.name}: multi-stage (builder, runtime) expected"
    builder, runtime = _stage(path, "builder"), stages[-1]
    for stage in stages:
        image = _base(path, stage)
        if image == "scratch":
            continue
        assert ":" in image.split("/")[-1] and "latest" not in image, f"{image}: pin a tag"
    assert _base(path, builder) == _base(path, runtime), "one base for both stages"
    text = path.read_text(encoding="utf-8")
    assert not _PIN.search(text), f"{path.name}: versions belong in pyproject.toml only"
    assert "pip install" not in text, f"{path.name}: installs go through docker/install.sh"
    installs = [args for kw, args in builder if kw == "RUN" and "docker/install.sh" in args]
    assert any("--torch-only" in a for a in installs) and len(installs) == 2, installs
    # the wheels stage (CCNET_WHEELS) is mounted into both install steps, never copied
    wheels = _stage(path, "wheels")
    assert wheels[0][1] == "scratch AS wheels" and _global_args(path)["CCNET_WHEELS"]
    assert _copies(wheels) == [(["${CCNET_WHEELS}/"], "/")]
    for install in installs:
        assert "--mount=type=bind,from=wheels,target=/wheels" in install, install
        assert "CCNET_FIND_LINKS=/wheels sh docker/install.sh" in install, install
    assert not any("wheels" in args for kw, args in runtime), "wheels stay out of the image"

    env = _assignments(runtime, "ENV")
    assert env["CCNET_HOST"] == "0.0.0.0" and env["CCNET_PORT"] == "8000"
    assert env["CCNET_MODEL_DIR"] == "/models"
    assert env["CCNET_CACHE_DIR"] == "/var/cache/ccnet"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert set(json.loads(_one(runtime, "VOLUME"))) == set(VOLUMES)
    assert _one(runtime, "EXPOSE") == "8000"
    user = _one(runtime, "USER")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"run as a numeric non-root uid, not {user!r}"
    assert json.loads(_one(runtime, "CMD")) == ["ccnet", "serve"]
    entrypoint = json.loads(_one(runtime, "ENTRYPOINT"))
    assert any(
        sources == ["docker/entrypoint.sh"] and Path(dest).name == Path(entrypoint[0]).name
        for sources, dest in _copies(runtime)
    ), f"ENTRYPOINT {entrypoint} is not docker/entrypoint.sh"
    check = _healthcheck_command(runtime)
    assert check[0] == "python" and "/healthz" in check[-1], check
    # the runtime stage gets no sources, only the built environment (and the entry point)
    assert [s for s, _ in _copies(runtime)] == [["docker/entrypoint.sh"]]
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime


def test_cpu_image_installs_cpu_torch() -> None:
    path = DOCKERFILES["cpu"]
    builder = _stage(path, "builder")
    args = _assignments(builder, "ARG")
    assert args["CCNET_TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert args["CCNET_EXTRAS"] == "serve,export"
    # BASE_IMAGE: both stages, default the pinned python:3.11-slim (tag and digest)
    assert builder[0][1] == "${BASE_IMAGE} AS builder"
    assert _stages(path)[-1][0][1] == "${BASE_IMAGE} AS runtime"
    base = _global_args(path)["BASE_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base
    # no `# syntax=` line: the engine's own frontend, nothing pulled besides the base
    assert not path.read_text(encoding="utf-8").startswith("# syntax")


def test_gpu_python_layer_is_the_cpu_recipe() -> None:
    """The two images install Python the same way: the same COPYs and install RUNs in the
    same order, differing only in the values of their ARGs (index, extras, venv flags)."""

    def python_layer(path: Path) -> list[tuple[str, str]]:
        builder = _stage(path, "builder")
        start = next(i for i, (kw, a) in enumerate(builder) if a == "pyproject.toml ./")
        steps = []
        for keyword, args in builder[start:]:
            if keyword == "RUN":
                args = args.split(" && ")[0]  # the GPU image's import check after the install
            steps.append((keyword, args if keyword != "ARG" else args.partition("=")[0]))
        return steps

    cpu, gpu = python_layer(DOCKERFILES["cpu"]), python_layer(DOCKERFILES["gpu"])
    assert [s for s in cpu if s[0] != "ARG"] == [s for s in gpu if s[0] != "ARG"]
    assert {a for k, a in cpu if k == "ARG"} <= {a for k, a in gpu if k == "ARG"}
    assert (
        _global_args(DOCKERFILES["gpu"])["CCNET_WHEELS"]
        == (_global_args(DOCKERFILES["cpu"])["CCNET_WHEELS"])
    )


def test_gpu_image_builds_and_points_at_the_plugin() -> None:
    stages = _stages(DOCKERFILES["gpu"])
    builder, runtime = _stage(DOCKERFILES["gpu"], "builder"), stages[-1]
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3 AS \w+", builder[0][1])
    assert builder[0][1].split()[0] == runtime[0][1].split()[0], "one base for both stages"
    runs = " ".join(args for kw, args in builder if kw == "RUN")
    assert "cmake -S export/tensorrt -B build/trt" in runs and "cmake --build build/trt" in runs
    cmake = (ROOT / "export" / "tensorrt" / "CMakeLists.txt").read_text(encoding="utf-8")
    target = re.search(r"add_library\((\w+) MODULE", cmake).group(1)
    library = f"lib{target}.so"
    env = _assignments(runtime, "ENV")
    assert env["CCNET_BACKEND"] == "tensorrt"
    assert Path(env["CCNET_TRT_PLUGIN"]).name == library
    assert (
        "COPY",
        f"--from=builder /src/build/trt/{library} {env['CCNET_TRT_PLUGIN']}",
    ) in runtime
    from ccnet.export.engine import PLUGIN_ENV

    assert PLUGIN_ENV == "CCNET_TRT_PLUGIN"
    args = _assignments(builder, "ARG")
    assert "/whl/cu" in args["CCNET_TORCH_INDEX"], "the GPU image takes torch's CUDA build"
    assert args["CCNET_VENV_ARGS"] == "--system-site-packages"  # the base image's tensorrt
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = _extras(pyproject, args["CCNET_EXTRAS"].split(","))
    assert "onnxruntime-gpu" in packages and "onnxruntime" not in packages, packages


def test_gpu_extra_pinned_and_apart_from_dev() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    gpu = pyproject["project"]["optional-dependencies"]["gpu"]
    assert any(re.fullmatch(r"onnxruntime-gpu==[\d.]+", r) for r in gpu), gpu
    assert "onnxruntime-gpu" not in _extras(pyproject, ["dev"])
    # the CPU image's extras and the GPU image's differ in the ONNX Runtime build only
    differ = _extras(pyproject, ["export"]) ^ _extras(pyproject, ["gpu"])
    assert differ == {"onnxruntime", "onnxruntime-gpu"}, differ


def test_install_script_reads_pins_from_pyproject() -> None:
    script = (DOCKER / "install.sh").read_text(encoding="utf-8")
    assert not _PIN.search(script), "docker/install.sh must not pin versions"
    assert "pyproject.toml" in script and "CCNET_TORCH_INDEX" in script
    result = subprocess.run(["sh", "-n", str(DOCKER / "install.sh")], capture_output=True)
    assert result.returncode == 0, result.stderr
    result = subprocess.run(["sh", "-n", str(DOCKER / "entrypoint.sh")], capture_output=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("arguments", "runs"),
    [
        ([], "ccnet serve"),
        (["--backend", "onnxruntime"], "ccnet serve --backend onnxruntime"),
        (["ccnet", "export", "onnx", "m.pt"], "ccnet export onnx m.pt"),
        (["python", "-V"], "python -V"),
    ],
)
def test_entrypoint_dispatch(tmp_path: Path, arguments: list[str], runs: str) -> None:
    """No arguments or flags only: `ccnet serve` with them; anything else runs as given."""
    for name in ("ccnet", "python"):
        fake = tmp_path / name
        fake.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        fake.chmod(0o755)
    result = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), *arguments],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0 and result.stdout.strip() == runs, result


def test_entrypoint_serves_demos_for_an_empty_models_folder(tmp_path: Path) -> None:
    """`ccnet serve --model-dir` serves exactly the folder (an empty one: nothing); the image
    keeps its promise of the demo models for an empty /models by leaving the folder out."""
    bin_dir, models = tmp_path / "bin", tmp_path / "models"
    bin_dir.mkdir()
    models.mkdir()
    fake = bin_dir / "ccnet"
    fake.write_text('#!/bin/sh\necho "dir=${CCNET_MODEL_DIR:-none}" "$@"\n')
    fake.chmod(0o755)

    def run() -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CCNET_MODEL_DIR": str(models)}
        return subprocess.run(
            ["sh", str(DOCKER / "entrypoint.sh")], env=env, capture_output=True, text=True
        )

    (models / ".hidden.pt").write_bytes(b"")
    empty = run()
    assert empty.stdout.strip() == "dir=none serve", empty
    assert "demo models" in empty.stderr
    (models / "mine.pt").write_bytes(b"")
    assert run().stdout.strip() == f"dir={models} serve"


def test_dockerignore_keeps_context_small_and_sources_in() -> None:
    rules = _dockerignore()
    for heavy in (".git", ".venv", "runs", "out", "build", "data", ".pytest_cache"):
        assert _ignored(heavy, rules), f".dockerignore lets {heavy}/ into the build context"
    for artefact in ("model.onnx", "export/x/engine.plan", "runs/a/best.pt", "x/model.engine"):
        assert _ignored(artefact, rules), f".dockerignore lets {artefact} in"
    assert _ignored("service/__pycache__/main.cpython-311.pyc", rules)
    for asset in (ROOT / "inference" / "assets").glob("*.pt"):
        relative = asset.relative_to(ROOT).as_posix()
        assert not _ignored(relative, rules), f"the demo model {relative} must reach the image"
    for kind, path in DOCKERFILES.items():
        defaults = _global_args(path)
        for stage in _stages(path):
            for sources, _ in _copies(stage):
                for source in sources:
                    for key, value in defaults.items():
                        source = source.replace(f"${{{key}}}", value)
                    assert (ROOT / source).exists(), f"{kind}: COPY {source} does not exist"
                    assert not _ignored(source, rules), f"{kind}: COPY {source} is ignored"
    # wheels dropped into the default CCNET_WHEELS folder reach the (mounted) wheels stage
    assert not _ignored("docker/wheels/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", rules)


# ----------------------------------------------------------------------------- compose


def test_compose_validates_against_the_compose_spec() -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_structure() -> None:
    compose = _compose()
    services = compose["services"]

    cpu = services["ccnet"]
    assert "profiles" not in cpu, "the CPU service is the default one"
    assert cpu["build"] == {"context": ".", "dockerfile": "docker/Dockerfile.cpu"}
    # published on 127.0.0.1 only: secure by default (issue 21)
    assert [_unset(p) for p in cpu["ports"]] == ["127.0.0.1:8000:8000"], cpu["ports"]
    # the CPU limit fits a small host by default, and the threads follow it
    cpus = cpu["deploy"]["resources"]["limits"]["cpus"]
    assert cpus == cpu["environment"]["CCNET_THREADS"] == "${CCNET_CPUS:-2}", cpus
    assert cpu["restart"] == "unless-stopped"
    assert {"cpus", "memory"} <= set(cpu["deploy"]["resources"]["limits"])
    for name, service in services.items():
        if not name.startswith("ccnet"):
            continue
        test = service["healthcheck"]["test"]
        path = re.search(r"/\w+", test[-1].split("127.0.0.1")[-1]).group(0)
        assert path == "/healthz", f"{name}: healthcheck {test}"
        _assert_served(path)
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert set(mounts) == set(VOLUMES), f"{name}: volumes {service['volumes']}"
        for volume in mounts.values():
            assert volume in compose["volumes"], f"{name}: {volume} is not a named volume"
    assert {v.split(":")[0] for v in cpu["volumes"]} == {"ccnet-models", "ccnet-cache"}
    # the image's HEALTHCHECK and compose's run the same command
    runtime = _stages(DOCKERFILES["cpu"])[-1]
    assert cpu["healthcheck"]["test"][1:] == _healthcheck_command(runtime)

    gpu = services["ccnet-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices
    assert gpu["environment"]["CCNET_BACKEND"] == "tensorrt"
    host_ports = [_unset(p).split(":")[-2] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"host ports collide: {host_ports}"

    replicas = services["ccnet-replica"]
    assert replicas["profiles"] == ["scale"] and replicas["deploy"]["replicas"] >= 2
    assert "ports" not in replicas, "replicas are reached through nginx only"
    nginx = services["nginx"]
    assert nginx["profiles"] == ["scale"] and re.fullmatch(r"nginx:\d+\.\d+\.\d+.*", nginx["image"])
    conf_mount = next(v for v in nginx["volumes"] if "nginx.conf" in v)
    conf = (ROOT / conf_mount.split(":")[0]).read_text(encoding="utf-8")
    assert re.search(r"server\s+ccnet-replica:8000\b", conf), "nginx must balance the replicas"

    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"])
    config_mount = next(v for v in prometheus["volumes"] if v.endswith("prometheus.yml:ro"))
    config_path = ROOT / config_mount.split(":")[0]
    assert config_path.exists(), config_path
    scrape = yaml.safe_load(config_path.read_text(encoding="utf-8"))["scrape_configs"]
    static = [
        (job.get("metrics_path", "/metrics"), target)
        for job in scrape
        for group in job.get("static_configs", [])
        for target in group["targets"]
    ]
    assert ("/metrics", "ccnet:8000") in static, static
    _assert_served("/metrics")
    for job in scrape:
        for sd in job.get("dns_sd_configs", []):
            assert all(name in services for name in sd["names"]), sd


# ----------------------------------------------------------------------------- README, k8s


def test_readme_deploying_names_only_existing_files() -> None:
    section = _deploying_section()
    named = set(
        re.findall(
            r"(?<![\w/.-])((?:docker|export|service|model|training|tests|bench)/[\w./-]*\w"
            r"|docker-compose\.yml|\.dockerignore|pyproject\.toml)",
            section,
        )
    )
    for required in ("docker/Dockerfile.cpu", "docker/Dockerfile.gpu", "docker-compose.yml"):
        assert required in named, f"README's Deploying section should name {required}"
    for required in ("docker/nginx.conf", "docker/k8s/ccnet.yaml", "docker/prometheus.yml"):
        assert required in named, f"README's Deploying section should name {required}"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README's Deploying section names missing files: {missing}"


def test_readme_deploying_commands_parse() -> None:
    """Every `ccnet ...` line in the section's code blocks is accepted by the real parser."""
    from ccnet.cli import build_parser

    blocks = re.findall(r"```[a-z]*\n(.*?)```", _deploying_section(), re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for segment in re.split(r"&&|;", line.split(" #")[0]):
                segment = segment.strip().strip("'\"").strip()
                if segment.startswith("ccnet "):
                    commands.append(segment)
    assert any(c.startswith("ccnet export triton") for c in commands), commands
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"README: `{command}` does not parse")


def test_k8s_manifest_probes_and_resources() -> None:
    docs = _k8s()
    kinds = {doc["kind"]: doc for doc in docs}
    assert {"Deployment", "Service"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            _assert_served(container[probe]["httpGet"]["path"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert 8000 in ports.values()
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and set(resources["limits"])
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the images' uid
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert set(VOLUMES) <= mounts
    service = kinds["Service"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    for port in service["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values()


# ----------------------------------------------------------------------------- the recipe


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stage_context(dockerfile: Path, destination: Path) -> None:
    """What the builder stage's COPY instructions put in its WORKDIR, .dockerignore applied."""
    rules = _dockerignore()
    for sources, dest in _copies(_stage(dockerfile, "builder")):
        for source in sources:
            origin = ROOT / source
            target = destination / dest
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    target,
                    dirs_exist_ok=True,
                    ignore=lambda folder, names: [
                        n
                        for n in names
                        if _ignored((Path(folder) / n).relative_to(ROOT).as_posix(), rules)
                    ],
                )
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)


def _torch_index_for_test(builder: list[tuple[str, str]]) -> str:
    """'' (pip's own configuration) where its find-links hold the pinned CPU torch wheel, as on
    this project's machines, where download.pytorch.org is out of reach; else the image's."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    folders = " ".join(re.findall(r"find-links='([^']*)'", config))
    folders += " " + os.environ.get("PIP_FIND_LINKS", "")
    wheel = f"torch-{pin.split('==')[1]}+cpu-*.whl"
    if any(list(Path(folder).glob(wheel)) for folder in folders.split() if Path(folder).is_dir()):
        return ""
    return _assignments(builder, "ARG")["CCNET_TORCH_INDEX"]


def _http(method: str, url: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url, timeout=kwargs.pop("timeout", 10), **kwargs)


@pytest.mark.slow
@pytest.mark.usefixtures("no_engine")
def test_cpu_recipe_installs_and_serves(tmp_path: Path) -> None:
    """Replays docker/Dockerfile.cpu outside Docker: its install RUNs (same script, same
    arguments, same ARGs) into a fresh venv, then its ENTRYPOINT + CMD with its ENV; the
    service must come up ready with the bundled models and segment a real photograph.
    Only where no Docker engine runs: test_image.py covers all of it (and more) with one.

    One deliberate difference: torch comes from this machine's pip configuration (a local CPU
    wheel) instead of download.pytorch.org, through install.sh's CCNET_TORCH_INDEX.
    """
    dockerfile = DOCKERFILES["cpu"]
    builder, runtime = _stage(dockerfile, "builder"), _stages(dockerfile)[-1]
    venv = tmp_path / "venv"
    source = tmp_path / "src"
    source.mkdir()
    _stage_context(dockerfile, source)
    assert not (source / "tests").exists() and (source / "inference" / "assets").is_dir()

    # the image's build: each RUN that calls docker/install.sh, with the builder's ARGs
    clean = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    build_env = {
        **clean,
        **_assignments(builder, "ARG"),
        "CCNET_TORCH_INDEX": _torch_index_for_test(builder),
        "CCNET_PIP_ARGS": "--no-compile --progress-bar off",  # speed: compile on import
        "PYTHON": sys.executable,  # a venv of the interpreter running the tests (3.11)
    }
    started = time.monotonic()
    for keyword, args in builder:
        if keyword != "RUN" or "docker/install.sh" not in args:
            continue
        command = re.sub(r"^(--\S+\s+)*", "", args).replace("/opt/venv", str(venv))
        result = subprocess.run(
            ["sh", "-c", command],
            cwd=source,
            env=build_env,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
    install_s = time.monotonic() - started
    pyvenv = (venv / "pyvenv.cfg").read_text(encoding="utf-8")
    assert "include-system-site-packages = false" in pyvenv

    # the runtime: ENV of the image, then the test's own address and empty folders
    home = tmp_path / "home"
    models = tmp_path / "models"
    cache = tmp_path / "cache"
    for folder in (home, models, cache):
        folder.mkdir()
    port = _free_port()
    base_path = "/usr/local/bin:/usr/bin:/bin"
    env = {"HOME": str(home), "LANG": "C.UTF-8", "PATH": base_path}
    for key, value in _assignments(runtime, "ENV").items():
        env[key] = value.replace("/opt/venv", str(venv)).replace("$PATH", base_path)
    env.update(
        CCNET_HOST="127.0.0.1",  # the image binds 0.0.0.0 inside its own network namespace
        CCNET_PORT=str(port),
        CCNET_MODEL_DIR=str(models),
        CCNET_CACHE_DIR=str(cache),
    )
    probe = "import service, torch; print(service.__file__); print(torch.version.cuda)"
    where, cuda = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    package = Path(where).parent
    assert venv in package.parents, f"service imported from {package}, not the venv"
    assert (package / "assets" / "ccnet-tiny.pt").is_file(), "demo model not installed"
    assert cuda == "None", f"the CPU recipe installed a CUDA torch (CUDA {cuda})"

    entrypoint = json.loads(_one(runtime, "ENTRYPOINT"))
    script = next(
        ROOT / sources[0]
        for sources, dest in _copies(runtime)
        if Path(dest).name == Path(entrypoint[0]).name
    )
    command = ["sh", str(script), *entrypoint[1:], *json.loads(_one(runtime, "CMD"))]
    log_path = tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, cwd=home, env=env, stdout=log, stderr=log)
    try:
        started = time.monotonic()
        status = None
        while time.monotonic() - started < 180:
            if server.poll() is not None:
                pytest.fail(f"server exited {server.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                status = _http("GET", f"{base}/readyz", timeout=2).status_code
            except httpx.HTTPError as error:  # not listening yet
                status = type(error).__name__
            if status == 200:
                break
            time.sleep(0.5)
        ready_s = time.monotonic() - started
        assert status == 200, f"/readyz {status} after 180 s:\n{log_path.read_text()[-4000:]}"

        # the image's HEALTHCHECK and compose's, as Docker would run them
        compose_check = _compose()["services"]["ccnet"]["healthcheck"]["test"][1:]
        for check in (_healthcheck_command(runtime), compose_check):
            result = subprocess.run(check, env=env, cwd=home, capture_output=True, timeout=10)
            assert result.returncode == 0, f"{check}: {result.stderr.decode()[-2000:]}"

        from PIL import Image
        from skimage import data

        photo = data.astronaut()
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format="PNG")
        started = time.monotonic()
        response = _http(
            "POST",
            f"{base}/v1/segment",
            files={"image": ("astronaut.png", buffer.getvalue(), "image/png")},
            timeout=120,
        )
        request_s = time.monotonic() - started
        assert response.status_code == 200, response.text[:2000]
        assert response.headers["content-type"].startswith("image/png")
        mask = Image.open(io.BytesIO(response.content))
        assert mask.format == "PNG" and mask.mode in ("P", "L"), mask.mode
        assert mask.size == (photo.shape[1], photo.shape[0]), mask.size
        listed = _http("GET", f"{base}/v1/models").json()["models"]
        model = next(m for m in listed if m["name"] == response.headers["x-model"])
        assert int(np.asarray(mask).max()) < len(model["classes"])
    finally:
        stopped_in_time = False
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)  # docker stop, with compose's 30 s grace period
            try:
                server.wait(timeout=30)
                stopped_in_time = True
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    # uvicorn shuts down gracefully, then re-raises the signal: exit status SIGTERM (143)
    log = log_path.read_text()
    assert stopped_in_time and server.returncode in (0, -signal.SIGTERM), (
        f"exit {server.returncode} on SIGTERM:\n{log[-3000:]}"
    )
    assert "Application shutdown complete" in log, log[-3000:]
    result = subprocess.run(_healthcheck_command(runtime), env=env, cwd=home, capture_output=True)
    assert result.returncode != 0, "the health check passes with the server stopped"
    print(
        f"\nrecipe: install {install_s:.0f} s, start to ready {ready_s:.1f} s, "
        f"one segmentation {request_s:.2f} s"
    )
