"""``ccnet predict`` in one process vs ``--engine ray`` with 1 and 2 workers, and on a
2-"node" local Ray cluster, over a few hundred 640×480 photographs.

    python -m bench.ray_predict [--images 300] [--keep DIR]

The photographs are scikit-image's samples, scaled up, cropped at random to 640×480,
flipped and tinted, saved as JPEG (each one different). Each candidate is the real command in
a subprocess, timed end to end (imports, model load, Ray start-up, writing the masks), with
the peak of the summed proportional set size (PSS, so shared pages count once) of its whole
process tree sampled every 0.25 s; for the cluster, the two ``ray start`` trees are summed in.
Ray's start-up (``ray.init`` + an actor pool that answers one batch) is timed on its own, and
the masks of every Ray run are compared with the single-process ones byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench._measure import format_table
from bench._serve import stop_process_group

ROOT = Path(__file__).resolve().parents[1]
_STARTUP = """
import logging, sys, time
t0 = time.perf_counter()
import ray, ray.data
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
ray.data.DataContext.get_current().enable_progress_bars = False
logging.getLogger("ray.data").setLevel(logging.ERROR)
class Echo:
    def __call__(self, batch):
        return batch
workers = int(sys.argv[1])
ds = ray.data.from_items([{"i": i} for i in range(4 * workers)], override_num_blocks=2 * workers)
ds.map_batches(Echo, batch_size=2, compute=ray.data.ActorPoolStrategy(size=workers)).take_all()
print(time.perf_counter() - t0)
ray.shutdown()
"""


def make_photographs(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` different 640×480 JPEGs from scikit-image's sample photographs."""
    import skimage.data
    from PIL import Image

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat"]
    sources = [Image.fromarray(np.asarray(getattr(skimage.data, n)())) for n in names]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        source = sources[index % len(sources)]
        scale = max(640 / source.width, 480 / source.height) * float(rng.uniform(1.0, 1.6))
        size = (int(np.ceil(source.width * scale)), int(np.ceil(source.height * scale)))
        image = source.resize(size, Image.Resampling.BILINEAR)
        left = int(rng.integers(0, image.width - 640 + 1))
        top = int(rng.integers(0, image.height - 480 + 1))
        pixels = np.asarray(image.crop((left, top, left + 640, top + 480)), dtype=np.float32)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        pixels = np.clip(pixels * rng.uniform(0.8, 1.2, size=3), 0, 255).astype(np.uint8)
        sub = folder / f"batch{index // 100:02d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(sub / f"photo{index:04d}.jpg", quality=90)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_pss(roots: list[int]) -> int:
    """Summed PSS of ``roots`` and all their descendants."""
    tree, seen, stack = _children(), set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            stack.extend(tree.get(pid, []))
    return sum(_pss_bytes(pid) for pid in seen)


def run_measured(argv: list[str], env: dict[str, str], extra_roots: list[int]) -> dict:
    """Run a command; its wall time, peak tree PSS (MiB), stdout and exit status."""
    start = time.perf_counter()
    process = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_pss([process.pid, *extra_roots]))
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    stop.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return {"seconds": seconds, "peak_mib": peak[0] / 2**20, "stdout": stdout}


def _masks(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*_mask.png"))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(env: dict[str, str], *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a group of its own, stopped as a whole below
    )


def _wait_for_nodes(env: dict[str, str], address: str, count: int, timeout: float = 120) -> None:
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-c", probe, address],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise RuntimeError(f"the local cluster at {address} did not reach {count} nodes")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--keep", type=Path, help="keep the photographs and results here")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="ccnet-bench-ray-"))
    photos = work / "photos"
    if not photos.is_dir():
        print(f"making {args.images} photographs in {photos} ...", file=sys.stderr)
        make_photographs(photos, args.images)
    n = sum(1 for _ in photos.rglob("*.jpg"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_AUTH_MODE": "token",  # a token of the bench's own, not ~/.ray's shared one
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    base = [sys.executable, "-m", "ccnet", "predict", str(photos), "--output", "png"]
    base += ["--no-progress", "--precision", "fp32"]
    ray = ["--engine", "ray", "--batch-size", "8"]
    results: dict[str, dict] = {}

    startup = {}
    for workers in (1, 2):
        done = subprocess.run(
            [sys.executable, "-c", _STARTUP, str(workers)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        startup[workers] = float(done.stdout.strip().splitlines()[-1])
        print(f"Ray start-up, {workers} worker(s): {startup[workers]:.1f} s", file=sys.stderr)

    # `ccnet predict` gives a lone forward pass every core (2 threads here); a Ray actor's pass
    # gets the 1 CPU it reserved. On a busy machine a 2-thread OpenMP pass loses much more to
    # preemption than a 1-thread one, so the same command pinned to one core is shown too.
    pinned = ["taskset", "-c", str(min(os.sched_getaffinity(0)))]
    candidates = {
        "ccnet predict (1 process)": [*base, "-o", str(work / "plain")],
        "ccnet predict (1 process, 1 core)": [*pinned, *base, "-o", str(work / "plain1")],
        "--engine ray, 1 worker": [*base, "-o", str(work / "ray1"), *ray, "--workers", "1"],
        "--engine ray, 2 workers": [*base, "-o", str(work / "ray2"), *ray, "--workers", "2"],
    }
    for name, command in candidates.items():
        shutil.rmtree(Path(command[command.index("-o") + 1]), ignore_errors=True)
        print(f"running {name} ...", file=sys.stderr)
        results[name] = run_measured(command, env, [])

    # two "nodes" on this host: a head and a worker node of 1 CPU each; the job asks for two
    # 1-CPU actors, so it can only finish by using both
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _ray_start(env, "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false")
    node = None
    try:
        _wait_for_nodes(env, address, 1)
        node = _ray_start(env, f"--address={address}", "--num-cpus=1")
        _wait_for_nodes(env, address, 2)
        name = "--engine ray, 2 workers, 2-node cluster"
        out = work / "cluster"
        shutil.rmtree(out, ignore_errors=True)
        command = [*base, "-o", str(out), *ray, "--workers", "2", "--address", address]
        print(f"running {name} ...", file=sys.stderr)
        results[name] = run_measured(command, env, [head.pid, node.pid])
        rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        per_node = Counter(row["worker"].split(":")[0] for row in rows)
    finally:
        for process in (node, head):
            if process is not None:
                stop_process_group(process)

    plain = _masks(work / "plain")
    assert len(plain) == n, (len(plain), n)
    for folder in ("plain1", "ray1", "ray2", "cluster"):
        assert _masks(work / folder) == plain, f"{folder}: masks differ from ccnet predict's"

    baseline = results["ccnet predict (1 process)"]["seconds"]
    rows = []
    for name, result in results.items():
        workers = 0 if "1 process" in name else (1 if "1 worker" in name else 2)
        start = startup.get(workers, 0.0)
        rows.append(
            [
                name,
                f"{result['seconds']:.1f}",
                f"{n / result['seconds']:.2f}",
                f"{baseline / result['seconds']:.2f}×",
                f"{start:.1f}" if workers else "–",
                f"{result['seconds'] - start - baseline:+.1f}",
                f"{result['peak_mib']:.0f}",
            ]
        )
    print(f"\n{n} photographs 640×480 JPEG, bundled ccnet-tiny, fp32, --output png")
    print(f"{_cpu_model()}, {os.cpu_count()} CPUs\n")
    headers = ["run", "wall s", "images/s", "vs 1 process", "Ray start-up s"]
    headers += ["wall − start-up − 1-process s", "peak PSS MiB"]
    print(format_table(headers, rows))
    print(f"\n2-node cluster: inputs per node {dict(per_node)}; every Ray run's masks are "
          "byte-identical to the single process's")  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
