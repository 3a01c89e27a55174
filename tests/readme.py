"""The README's runnable blocks, found by their ``<!-- ci: MARKER -->`` comment, and a runner
for its shell blocks: bash, ``set -euo pipefail``, the ``ccnet`` and ``python`` on PATH being
this checkout's (with flags appended that shrink data sets and runs to CI size),
``localhost:8000`` pointed at the test's own port. Nothing else of a block is changed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

__all__ = ["README", "readme_block", "run_shell_block"]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# appended to a command's own flags (argparse: the last one wins): the same steps, smaller
_SHRINK = {
    "synth": "--n 12 --val 4",
    "train": "--iterations 6 --val-every 6 --checkpoint-every 6 --warmup-iterations 2 "
    "--batch-size 4",
}


def readme_block(marker: str) -> str:
    """The fenced block that follows ``<!-- ci: MARKER -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- ci: {marker} -->\s*```\w*\n(.*?)```", text, re.S)
    assert found, f"README has no block marked <!-- ci: {marker} -->"
    return found.group(1)


def _ccnet_on_path(bin_dir: Path) -> None:
    """A ``ccnet`` that runs this checkout with this interpreter (``exec``: a block's
    ``ccnet serve &`` is the server process itself, so ``kill %1`` stops it)."""
    cases = "".join(f"    {command}) extra='{flags}' ;;\n" for command, flags in _SHRINK.items())
    script = (
        "#!/bin/bash\nextra=''\ncase \"$1\" in\n"
        f"{cases}esac\n"
        f'exec "{sys.executable}" -m ccnet "$@" $extra\n'
    )
    wrapper = bin_dir / "ccnet"
    wrapper.write_text(script)
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)


def run_shell_block(
    marker: str, cwd: Path, *, port: int, env: dict[str, str] | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the README's shell block ``marker`` in ``cwd``; raises AssertionError with its
    output if it fails. Anything it left running (its process group) is killed after."""
    bin_dir = cwd / ".ci-bin"
    bin_dir.mkdir(exist_ok=True)
    _ccnet_on_path(bin_dir)
    block = readme_block(marker).replace("localhost:8000", f"127.0.0.1:{port}")
    # ``python`` is this interpreter, as in the activated environment the README assumes
    path = os.pathsep.join((str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]))
    environment = {**os.environ, **(env or {}), "PATH": path}
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    process = subprocess.Popen(
        ["bash", "-c", "set -euo pipefail\n" + block],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"README block {marker} timed out:\n{out}\n{err}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    assert done.returncode == 0, f"README block {marker} failed:\n{block}\n{out}\n{err[-6000:]}"
    return done
