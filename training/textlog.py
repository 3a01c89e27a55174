"""The run's text log: ``RUN_DIR/train.log`` always, and the same lines on stderr when there
is no progress bar (``--no-progress``, a scheduler's log file), so a run is never silent.

TensorBoard holds the curves; this is what ``tail -f`` and a CI log show: the setup, the
loss and learning rate every ``log_every`` steps, each validation (mIoU in percent, as every
human-facing line of ``ccnet`` prints it) and the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

__all__ = ["TextLog", "percent"]


def percent(fraction: float | None) -> str:
    """A fraction (0..1, as JSON carries it) as the percentage people read: ``85.5 %``."""
    return "n/a" if fraction is None else f"{100 * fraction:.1f} %"


class TextLog:
    """Appends timestamped lines to ``path`` (created with its folder on the first line);
    ``echo`` also writes them to stderr. A disabled log (``enabled=False``: not the main
    process of a DDP run) writes nothing."""

    def __init__(self, path: Path, *, echo: bool, enabled: bool = True) -> None:
        self.path = path
        self.echo = echo
        self.enabled = enabled
        self._file: TextIO | None = None

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(stamped + "\n")
        self._file.flush()
        if self.echo:
            print(stamped, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
