"""The parity gate's figures kept between starts, keyed by model file, backend, CPU and
runtime versions (``CACHE/precision/<key>.json``), so a restart does not measure again."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from ccnet.inference.precision.capabilities import detect_cpu
from ccnet.inference.precision.gate import GateFigures

__all__ = ["GATE_VERSION", "GateCache"]

GATE_VERSION = 3  # bump when the gate's data or criteria change: old cached figures go

log = logging.getLogger("ccnet.inference.precision")


class GateCache:
    """Measured figures in ``DIR/precision/<key>.json``, keyed by model file, backend,
    CPU and runtime versions, so a restart does not measure again."""

    def __init__(self, cache_dir: Path, key: str) -> None:
        self.path = cache_dir / "precision" / f"{key}-g{GATE_VERSION}.json"

    def load(self) -> dict[str, GateFigures]:
        try:
            stored = json.loads(self.path.read_text())
            return {name: GateFigures(**values) for name, values in stored["figures"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def store(self, figures: Mapping[str, GateFigures], data: str) -> None:
        from ccnet.model.files import write_json_atomic

        try:
            write_json_atomic(
                self.path,
                {
                    "gate_version": GATE_VERSION,
                    "cpu": detect_cpu().describe(),
                    "data": data,
                    "figures": {name: asdict(f) for name, f in figures.items()},
                },
            )
        except OSError as error:  # a read-only cache costs a re-measure next time, no more
            log.warning("cannot cache the precision gate in %s: %s", self.path, error)
