"""Start-up of the command, side by side with another revision: `ccnet models` to exit and
`ccnet serve` (bundled demo models, fp32) to `/readyz` 200, runs interleaved, medians.

    git worktree add /tmp/old 01aaa44          # the revision to compare with
    python -m bench.startup --other /tmp/old --rounds 5

The other tree runs with ``PYTHONPATH`` set to it; it may be from before the ``ccnet``
package (``ccnet_cli.py`` at its root) or after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from bench._measure import format_table
from bench._serve import ROOT, ServerError, free_port


def _entry(tree: Path) -> list[str]:
    """How to run ``ccnet`` from ``tree`` (the old layout had a top-level ``ccnet_cli``)."""
    if (tree / "ccnet_cli.py").is_file():
        return [sys.executable, "-c", "import ccnet_cli, sys; sys.exit(ccnet_cli.main())"]
    return [sys.executable, "-m", "ccnet"]


def _env(tree: Path, cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "CCNET_CACHE_DIR": str(cache),
            "CCNET_PRECISION": "fp32", "CCNET_LOG_FORMAT": "text"}  # fmt: skip


def time_models(tree: Path, cache: Path) -> float:
    began = time.perf_counter()
    subprocess.run([*_entry(tree), "models"], cwd=tree, env=_env(tree, cache), check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - began


def time_serve(tree: Path, cache: Path, ready_s: float = 180) -> float:
    port = free_port()
    began = time.perf_counter()
    process = subprocess.Popen([*_entry(tree), "serve", "--port", str(port)], cwd=tree,
                               env=_env(tree, cache), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while time.perf_counter() - began < ready_s:
            if process.poll() is not None:
                raise ServerError(f"ccnet serve from {tree} exited with {process.returncode}")
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return time.perf_counter() - began
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        raise ServerError(f"ccnet serve from {tree} not ready in {ready_s:g} s")
    finally:
        process.terminate()
        process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="a checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    trees = {"this tree": ROOT, "other": args.other.resolve()}
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as cache:
        for round_ in range(args.rounds):
            order = list(trees.items()) if round_ % 2 == 0 else list(trees.items())[::-1]
            for label, tree in order:
                times.setdefault(("models", label), []).append(time_models(tree, Path(cache)))
                times.setdefault(("serve", label), []).append(time_serve(tree, Path(cache)))
    rows = [
        [what, label, f"{statistics.median(v):.2f}", f"{min(v):.2f}", str(len(v))]
        for (what, label), v in times.items()
    ]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(format_table(["command", "tree", "median s", "min s", "runs"], rows))


if __name__ == "__main__":
    main()
