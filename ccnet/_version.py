"""The installed package's version: what OpenAPI, ``ccnet_build_info`` and ``ccnet
--version`` report (one source: the distribution's metadata, from pyproject.toml)."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

__all__ = ["DISTRIBUTION", "package_version"]

DISTRIBUTION = "ccnet-stack"


@cache
def package_version() -> str:
    """The ``Version:`` of the installed distribution's METADATA, read directly: importing
    ``importlib.metadata`` (email parsing and all) takes longer than the rest of ``ccnet
    --version``. Falls back to it for installs laid out otherwise (eggs, zips)."""
    stem = DISTRIBUTION.replace("-", "_")
    for entry in sys.path:
        for info in sorted(Path(entry or ".").glob(f"{stem}-*.dist-info")):
            try:
                for line in (info / "METADATA").read_text(encoding="utf-8").splitlines():
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line:
                        break  # the headers end at the first blank line
            except OSError:
                continue
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"
