"""A real ``ccnet serve`` process for the end-to-end tests (``bench._serve``'s, with its
errors turned into test failures)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._serve import ROOT, ServerError, free_port, serve_process

__all__ = ["ROOT", "free_port", "serve"]


@contextlib.contextmanager
def serve(
    log: Path,
    env: dict[str, str],
    *,
    ready_s: float = 120,
    stop_s: float = 30,
    drop: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run ``ccnet serve`` with ``os.environ`` updated by ``env`` (less the ``drop`` names),
    its output in ``log``; yields the base URL once the server is ready."""
    try:
        server = serve_process(log, env, ready_s=ready_s, stop_s=stop_s, drop=drop)
        base, _ = server.__enter__()
    except ServerError as error:
        pytest.fail(str(error))
    try:
        yield base
    except BaseException as error:
        if not server.__exit__(type(error), error, error.__traceback__):
            raise
    else:
        server.__exit__(None, None, None)
