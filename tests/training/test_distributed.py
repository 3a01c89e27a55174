"""Two processes under torchrun (gloo on CPU): DDP training and a sharded, reduced validation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from ccnet.model import load_checkpoint
from ccnet.training.synth import generate

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_run(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    generate(data, "images", 4, n_val=3, seed=2, size=32, progress=False)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "ccnet", "train", "--model", "ccnet-tiny", "--data", str(data), "--out",
        str(run), "--iterations", "2", "--batch-size", "1", "--crop-size", "32", "--device",
        "cpu", "--threads", "1", "--val-every", "0", "--checkpoint-every", "2",
        "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # the attention's 1×1 projections hand DDP gradients laid out like its buckets
    assert "Grad strides do not match bucket view strides" not in done.stderr, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["iterations"] == 2
    # each rank scored its share of the 3 validation images; the matrices were summed
    assert summary["val"]["pixels"] == 3 * 32 * 32
    state = (run / "checkpoints" / "latest").read_text().strip()
    assert state == "iter_000002"
    _, meta = load_checkpoint(run / "final.pt")
    assert meta["provenance"]["world_size"] == 2
    assert done.stdout.count('"world_size": 2') == 1  # only rank 0 reports
