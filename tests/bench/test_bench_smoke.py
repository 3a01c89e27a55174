"""The benchmarks run end to end (tiny shapes); their numbers are not asserted on."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["bench.cca_op", "bench.rcca_vs_nonlocal"])
def test_benchmark_quick_run_prints_a_table(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("|---") or line.startswith("|-") for line in lines), done.stdout
    assert "einsum (baseline)" in done.stdout or "non-local / RCCA" in done.stdout
