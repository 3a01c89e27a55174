"""``ccnet predict --engine ray``: the same masks as one process, a manifest with error rows,
re-runs that skip finished work, input lists, and a ``ray start --head`` cluster joined with
``--address``. One local Ray (2 CPUs) serves the module; the cluster test starts its own."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench._serve import stop_process_group
from ccnet.cli import main
from ccnet.inference.demo import BUNDLED_MODELS
from ccnet.model.files import file_sha256

ray = pytest.importorskip("ray", reason="the [batch] extra (Ray) is not installed")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 100


def _photographs() -> list[np.ndarray]:
    import skimage.data

    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    rng = np.random.default_rng(7)
    crops = []
    for index in range(N_IMAGES):
        image = np.asarray(sources[index % len(sources)])
        height, width = int(rng.integers(24, 64)), int(rng.integers(24, 64))
        top = int(rng.integers(0, image.shape[0] - 4 * height))
        left = int(rng.integers(0, image.shape[1] - 4 * width))
        crops.append(
            np.ascontiguousarray(image[top : top + 4 * height : 4, left : left + 4 * width : 4])
        )
    return crops


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``photos/``: 100 small photographs in nested folders (PNG and JPEG) and two corrupt
    files; ``plain/``: what ``ccnet predict`` in one process made of them."""
    root = tmp_path_factory.mktemp("ray")
    for index, rgb in enumerate(_photographs()):
        folder = root / "photos" / f"set{index % 4}" / ("day" if index % 3 else "night")
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".jpg" if index % 2 else ".png"
        Image.fromarray(rgb).save(folder / f"img{index:03d}{suffix}")
    broken = root / "photos" / "broken"
    broken.mkdir()
    buffer = io.BytesIO()
    Image.fromarray(_photographs()[0]).save(buffer, "JPEG")
    (broken / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    (broken / "notes.png").write_text("not an image at all")
    old = Path.cwd()
    os.chdir(root)
    try:
        argv = ["predict", "photos", "-o", "plain", "--output", "png", "--no-progress"]
        assert main(argv) == 2  # the two corrupt files
    finally:
        os.chdir(old)
    return root


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for the module; its workers import this checkout."""
    with pytest.MonkeyPatch.context() as patch:
        path = os.environ.get("PYTHONPATH")
        patch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{path}" if path else str(ROOT))
        quiet = {"include_dashboard": False, "logging_level": logging.WARNING}
        ray.init(address="local", num_cpus=2, **quiet)
        try:
            yield
        finally:
            ray.shutdown()


def _masks(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*_mask.png"))}


def _ray_predict(out: str, *flags: str) -> list[str]:
    argv = ["predict", "photos", "-o", out, "--output", "png", "--no-progress", "--engine", "ray"]
    return [*argv, "--workers", "2", "--batch-size", "10", *flags]


def _report(capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_run(workspace: Path, local_ray: None) -> tuple[dict, str]:
    """The tree through ``--engine ray`` once (2 actors): its report and stderr."""
    old = Path.cwd()
    os.chdir(workspace)
    try:
        stdout, stderr = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stdout", stdout)
            patch.setattr(sys, "stderr", stderr)
            code = main(_ray_predict("ray"))
    finally:
        os.chdir(old)
    assert code == 2, stderr.getvalue()
    return json.loads(stdout.getvalue()), stderr.getvalue()


def test_ray_writes_the_masks_predict_writes(workspace: Path, ray_run) -> None:
    """Byte for byte the same masks at the same mirrored paths; the corrupt files are error
    rows and the exit status says how many failed."""
    report, stderr = ray_run
    assert (report["inputs"], report["segmented"], report["failed"]) == (102, 100, 2)
    assert "2 of 102 input(s) could not be segmented" in stderr
    plain, on_ray = _masks(workspace / "plain"), _masks(workspace / "ray")
    assert len(plain) == N_IMAGES
    assert sorted(on_ray) == sorted(plain)
    differing = [name for name in plain if plain[name] != on_ray[name]]
    assert not differing, differing[:5]


def test_the_manifest_has_a_row_per_input(workspace: Path, ray_run) -> None:
    out = workspace / "ray"
    rows = _jsonl(out / "manifest.jsonl")
    table = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == len(table) == 102
    assert [r["input"] for r in rows] == [r["input"] for r in table]
    errors = {Path(r["input"]).name: r["error"] for r in rows if r["error"] is not None}
    assert sorted(errors) == ["notes.png", "truncated.jpg"]
    assert all(name in message for name, message in errors.items())
    sha = file_sha256(BUNDLED_MODELS[0])
    for row, stored in zip(rows, table, strict=True):
        if row["error"] is not None:
            assert row["outputs"] == [] and stored["error"] == row["error"]
            continue
        assert row["model"] == "ccnet-tiny" and row["model_sha256"] == sha
        with Image.open(workspace / row["input"]) as image:
            assert [row["width"], row["height"]] == list(image.size)
        assert [Path(p).name for p in row["outputs"]] == [f"{Path(row['target']).name}_mask.png"]
        assert abs(sum(row["class_fractions"].values()) - 1.0) < 1e-3
        assert dict(stored["class_fractions"]) == row["class_fractions"]
        assert stored["outputs"] == row["outputs"] and row["worker"]


def test_a_rerun_skips_finished_work_and_a_killed_run_resumes(
    workspace: Path, ray_run, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(workspace)
    out = workspace / "ray"
    before = _jsonl(out / "manifest.jsonl")
    # the same command again: nothing is segmented, nothing rewritten, failures still counted
    assert main(_ray_predict("ray")) == 2
    report, _ = _report(capsys)
    assert (report["skipped"], report["segmented"], report["failed"]) == (102, 0, 2)
    assert _jsonl(out / "manifest.jsonl") == before

    # a job killed after 40 inputs: a torn last line, no Parquet yet; meanwhile one result
    # was deleted and one input replaced
    journal = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text("".join(journal[:40]) + journal[40][:37])
    (out / "manifest.parquet").unlink()
    kept = [json.loads(line) for line in journal[:40]]
    done = [row for row in kept if row["error"] is None]
    Path(done[0]["outputs"][0]).unlink()
    replaced = Path(done[1]["input"])
    os.utime(replaced, ns=(time.time_ns(), time.time_ns()))
    assert main(_ray_predict("ray")) == 2
    report, _ = _report(capsys)
    # 38 rows stand (the 2 corrupt files among them); the other 64 are segmented again
    assert (report["skipped"], report["segmented"], report["failed"]) == (38, 64, 2)
    rows = _jsonl(out / "manifest.jsonl")
    assert len(rows) == len(pq.read_table(out / "manifest.parquet")) == 102
    assert _masks(out) == _masks(workspace / "plain")


def test_an_input_list_of_paths_and_file_uris(workspace: Path, local_ray, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    first = sorted(Path("photos/set0/day").iterdir())[0]
    absolute = sorted((workspace / "photos/set1/night").iterdir())[0]
    listing = Path("inputs.txt")
    missing = workspace / "photos" / "gone.png"
    listing.write_text(f"# three inputs\n{first}\n\n{absolute.as_uri()}\nfile://{missing}\n")
    base = ["predict", "--input-list", str(listing), "--output", "png", "--no-progress"]
    assert main([*base, "-o", "listed", "--engine", "ray", "--workers", "1"]) == 2
    report, stderr = _report(capsys)
    assert (report["segmented"], report["failed"]) == (2, 1)
    assert "gone.png" in stderr
    mirrored = Path("listed") / first.parent / f"{first.stem}_mask.png"
    by_name = Path("listed") / f"{absolute.stem}_mask.png"  # absolute: its name alone
    assert mirrored.read_bytes() == (Path("plain") / mirrored.relative_to("listed")).read_bytes()
    assert by_name.is_file()
    # the one-process engine reads the same list into the same places
    assert main([*base, "-o", "listed_here"]) == 2
    capsys.readouterr()
    assert _masks(Path("listed_here")) == _masks(Path("listed"))


def test_a_missing_ray_names_the_extra(workspace: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(workspace)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    image = next(Path("photos/set0/day").iterdir())
    argv = ["predict", str(image), "-o", "noray", "--engine", "ray", "--no-progress"]
    assert main(argv) == 2
    assert "pip install 'ccnet-stack[batch]'" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_address_joins_a_ray_start_head_cluster(workspace: Path) -> None:
    """``ray start --head`` (1 CPU) started here; ``--address`` runs the job on it."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        # a token of its own: never the one in ~/.ray that other Ray users share
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    head = subprocess.Popen(
        [
            *(sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"),
            *(f"--port={port}", "--num-cpus=1", "--include-dashboard=false"),
            "--node-ip-address=127.0.0.1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: stopped below, and nothing else
    )
    try:
        images = sorted(Path(workspace / "photos/set2/day").iterdir())[:4]
        argv = [
            *(sys.executable, "-m", "ccnet", "predict", *map(str, images)),
            *("-o", str(workspace / "cluster"), "--output", "png", "--no-progress"),
            *("--engine", "ray", "--address", f"127.0.0.1:{port}"),
        ]
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=180, check=False
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["segmented"] == 4
        for image in images:
            mask = f"{image.stem}_mask.png"
            plain = workspace / "plain" / image.relative_to(workspace).parent / mask
            assert (workspace / "cluster" / mask).read_bytes() == plain.read_bytes()
    finally:
        stop_process_group(head)


def test_ray_flags_need_the_ray_engine(workspace: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(workspace)
    argv = ["predict", "photos", "-o", "x", "--workers", "4", "--address", "auto"]
    assert main(argv) == 2
    assert "--address, --workers: only with --engine ray" in capsys.readouterr().err
