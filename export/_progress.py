"""Progress lines for the long export steps: a callable taking one line, stderr by default.

Library calls take ``progress=None`` for silence; the CLI keeps stdout for the JSON summary.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["Progress", "silent", "to_stderr"]

Progress = Callable[[str], None]


def to_stderr(line: str) -> None:
    """Print a progress line to stderr, flushed (export steps take seconds to minutes)."""
    print(line, file=sys.stderr, flush=True)


def silent(line: str) -> None:
    """Discard a progress line."""
