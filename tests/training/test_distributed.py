"""Under torchrun (gloo on CPU): two processes on one node (DDP training and a sharded,
reduced validation), and two single-process nodes meeting at a c10d rendezvous, resumed."""

from __future__ import annotations

import json
import os
import shutil
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


def _two_nodes(data: Path, run: Path, *extra: str) -> list[subprocess.CompletedProcess[str]]:
    """Two torchrun agents as two "nodes" of one process each, meeting at a c10d rendezvous
    on 127.0.0.1 (on real machines: the first node's address), as the README's recipe runs."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    nodes = []
    for node_rank in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc-per-node", "1", "--node-rank", str(node_rank),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--rdzv-id", "ccnet-two-nodes", "--max-restarts", "0",
            "-m", "ccnet", "train", "--model", "ccnet-tiny", "--data", str(data), "--out",
            str(run), "--iterations", "4", "--batch-size", "1", "--crop-size", "32",
            "--device", "cpu", "--threads", "1", "--val-every", "0", "--checkpoint-every", "2",
            "--no-progress", "--no-tensorboard", *extra,
        ]  # fmt: skip
        nodes.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    done = []
    for node in nodes:
        try:
            stdout, stderr = node.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise
        done.append(subprocess.CompletedProcess(node.args, node.returncode, stdout, stderr))
    return done


def test_two_node_run_and_its_resume(tmp_path: Path) -> None:
    """``torchrun --nnodes 2`` with the c10d rendezvous trains as one job of world size 2, and
    a run that lost its last checkpoint (killed between checkpoints) resumes on both nodes
    from the one before and ends on the same weights, bit for bit."""
    import torch

    data, run = tmp_path / "data", tmp_path / "run"
    generate(data, "images", 4, n_val=2, seed=3, size=32, progress=False)
    first = _two_nodes(data, run)
    assert all(node.returncode == 0 for node in first), [n.stderr[-2000:] for n in first]
    assert sum(node.stdout.count('"world_size": 2') for node in first) == 1  # rank 0 reports
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["world_size"], summary["iterations"]) == (2, 4)
    finished, _ = load_checkpoint(run / "final.pt")
    # as if both machines were killed during step 4: its checkpoint and the results never made it
    shutil.rmtree(run / "checkpoints" / "iter_000004")
    for name in ("final.pt", "summary.json"):
        (run / name).unlink()
    (run / "checkpoints" / "latest").write_text("iter_000002\n")
    second = _two_nodes(data, run, "--resume")
    assert all(node.returncode == 0 for node in second), [n.stderr[-2000:] for n in second]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["resumed_from"], summary["steps_this_run"]) == (2, 2)
    assert summary["world_size"] == 2
    resumed, _ = load_checkpoint(run / "final.pt")
    a, b = finished.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
