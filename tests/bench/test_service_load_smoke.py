"""The service load benchmark runs end to end (short cells); its timings are not asserted on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts three servers; about 20 s on two cores


def test_service_load_quick_run_prints_a_table_and_answers_every_cell(tmp_path: Path) -> None:
    raw_path = tmp_path / "load.json"
    command = [sys.executable, "-m", "bench.service_load", "--quick"]
    command += ["--servers", "torch,baseline,overload", "--json", str(raw_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("|---") for line in lines), done.stdout
    assert "baseline (no batching)" in done.stdout
    assert "throughput, torch, batched, auto precision / baseline (no batching)" in done.stdout

    raw = json.loads(raw_path.read_text())
    cells = {(cell["server"], cell["clients"]): cell for cell in raw["cells"]}
    assert set(cells) == {
        ("torch", 1), ("torch", 4), ("baseline", 1), ("baseline", 4), ("overload", 32),
    }  # fmt: skip
    for key, cell in cells.items():
        assert cell["ok"] > 0, key
        assert cell["other_5xx"] == 0, key
        assert cell["errors"] == 0, key
        assert cell["retry_after_missing"] == 0, key
    for clients in (1, 4):  # below saturation nothing is turned away
        assert cells[("torch", clients)]["rejected_503"] == 0
        assert cells[("torch", clients)]["mean_batch_size"] >= 1
    assert cells[("overload", 32)]["rejected_503"] > 0  # 32 clients overflow a queue of 8
