"""One import package, ``ccnet``: what the wheel holds, what a core install can do, and the
import graph.

The core-install test builds the wheel, installs it into a fresh virtual environment beside
exactly the distributions the core dependencies need (linked from this environment, so no
network and no second torch download), and runs the README's two lines from a folder that
holds its own ``model.py``, ``service/``, ``training/``, ``export/`` and ``inference/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import grimp
import pytest
from PIL import Image

from ccnet.model.samples import sample_photograph

ROOT = Path(__file__).resolve().parents[1]
_CORE = ("torch", "numpy", "pillow", "tqdm")
_HTTP_AND_EXTRAS = (
    "fastapi",
    "pydantic",
    "pydantic_settings",
    "uvicorn",
    "starlette",
    "onnxruntime",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (found,) = out.glob("ccnet_stack-*.whl")
    return found


def test_wheel_holds_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("ccnet_stack-")}
    assert tops == {"ccnet"}, f"the wheel installs {sorted(tops)}"
    for required in (
        "ccnet/model/cca.py",
        "ccnet/inference/segmenter.py",
        "ccnet/inference/assets/ccnet-tiny.pt",
        "ccnet/service/static/index.html",
        "ccnet/export/tensorrt/CMakeLists.txt",
    ):
        assert required in names, f"{required} missing from the wheel"
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(top_level).decode().split() == ["ccnet"]


def _distributions(requirements: tuple[str, ...]) -> set[str]:
    """Every installed distribution the given ones need, transitively (markers honoured)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def _link_core(site: Path) -> None:
    """Link the files of exactly the core distributions into ``site`` (a core install)."""
    for name in _distributions(_CORE):
        distribution = metadata.distribution(name)
        base = Path(distribution.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in distribution.files or []}
        for top in tops:
            source = base / top
            if top.endswith(".pth") or top == ".." or not source.exists():
                continue
            target = site / top
            if not target.exists():
                target.symlink_to(source)


@pytest.mark.slow
def test_core_install_segments_a_photograph_from_a_hostile_folder(
    wheel: Path, tmp_path: Path
) -> None:
    """The README's two lines with the core install only, beside packages named like ours,
    with the GPU image's CCNET_BACKEND exported: torch runs, no HTTP module or ONNX Runtime
    is imported."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    _link_core(site)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # what pip does with a pure wheel
    work = tmp_path / "user"
    for package in ("service", "training", "export", "inference"):
        (work / package).mkdir(parents=True)
        (work / package / "__init__.py").write_text("raise ImportError('the user package')\n")
    (work / "model.py").write_text("raise ImportError('the user module')\n")
    photo = sample_photograph("coffee")  # a real photograph (scikit-image, in the dev install)
    Image.fromarray(photo).save(work / "photo.png")
    script = """
import json, sys
from ccnet import Segmenter
seg = Segmenter.from_file("ccnet-tiny", precision="fp32")
result = seg("photo.png")
heavy = [m for m in %r if m in sys.modules]
print(json.dumps({"shape": list(result.mask.shape), "backend": seg.backend.name,
                  "classes": len(result.class_fractions()), "heavy": heavy}))
""" % (list(_HTTP_AND_EXTRAS),)  # noqa: UP031
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "CCNET_BACKEND": "onnxruntime",
        "CCNET_PRECISION": "int8",
        "CCNET_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [str(python), "-c", script], cwd=work, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["shape"] == list(photo.shape[:2])
    assert report["backend"] == "torch", "the environment chose the backend"
    assert report["heavy"] == [], f"a core install imported {report['heavy']}"
    assert report["classes"] >= 1
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.onnx"))


def test_no_import_cycles() -> None:
    """No module of ``ccnet`` reaches itself through its imports, function-level ones
    included (import-linter's layers hold between packages; this holds inside them)."""
    graph = grimp.build_graph("ccnet", exclude_type_checking_imports=True)
    cycles = sorted(
        f"{module} <-> {imported}"
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    )
    assert cycles == []


def test_bare_folder_names_are_banned_for_ruff() -> None:
    """From a checkout ``model`` is importable too; ruff refuses it so no module is loaded twice."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    banned = config["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"]
    assert {"model", "export", "inference", "service", "training"} <= set(banned)
