"""The installed package's version: what OpenAPI, ``ccnet_build_info`` and ``ccnet
--version`` report (one source: the distribution's metadata, from pyproject.toml)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

__all__ = ["DISTRIBUTION", "package_version"]

DISTRIBUTION = "ccnet-stack"


@cache
def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"
