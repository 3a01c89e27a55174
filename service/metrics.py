"""Prometheus metrics, one registry per app (tests build many apps in one process).

With ``--workers N`` each worker process keeps its own counters; a scrape reaches one worker.
Run one worker per container and scale with replicas when the numbers must add up.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ccnet._version import package_version
from ccnet.inference.precision.capabilities import detect_cpu
from ccnet.inference.precision.select import precision_entry

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


if TYPE_CHECKING:
    from ccnet.inference.backends.base import InferenceBackend
    from ccnet.service.reload import ModelVersion


class ServiceMetrics:
    """The service's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ccnet_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ccnet_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "ccnet_errors_total",
            "error responses by machine-readable code",
            ["code"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "ccnet_queue_depth",
            "requests waiting for inference, by model",
            ["model"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ccnet_batch_size",
            "images per forward pass, by model",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "ccnet_inference_seconds",
            "forward-pass time by backend and model",
            ["backend", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.budget_used = Gauge(
            "ccnet_memory_budget_used_bytes",
            "bytes of the memory budget reserved by requests in flight",
            registry=self.registry,
        )
        self.disconnects = Counter(
            "ccnet_client_disconnects_total",
            "requests whose client went away before the answer (logged, answered 499)",
            registry=self.registry,
        )
        self.precision = Gauge(
            "ccnet_model_precision_info",
            "1 per model: the precision it runs in, the setting, and the CPU's AMX, "
            "AVX512-BF16 and VNNI support",
            ["model", "backend", "precision", "requested", "amx", "avx512_bf16", "vnni"],
            registry=self.registry,
        )
        self.precision_speedup = Gauge(
            "ccnet_model_precision_speedup",
            "measured speed-up of the chosen precision over fp32 (parity gate), by model",
            ["model"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "ccnet_ready", "1 once every model is loaded and warmed up", registry=self.registry
        )
        self.reload_failures = Counter(
            "ccnet_model_reload_failures",
            "models-folder files that failed to (re)load, by file (the last good version serves)",
            ["file"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "ccnet_model_version_info",
            "1 per served model: the SHA-256 and file name of the version it serves",
            ["model", "sha256", "file"],
            registry=self.registry,
        )
        self.build = Gauge(
            "ccnet_build_info", "1: the ccnet package version", ["version"], registry=self.registry
        )
        self.build.labels(package_version()).set(1)

    def record_precision(self, backend: InferenceBackend) -> None:
        """Set the precision gauges of a freshly loaded model."""
        entry = precision_entry(backend)
        cpu = detect_cpu()
        self.precision.labels(
            backend.info.name,
            backend.name,
            str(entry["chosen"]),
            str(entry["requested"]),
            "amx" if cpu.amx_bf16 or cpu.amx_int8 else "no",
            "yes" if cpu.avx512_bf16 else "no",
            "yes" if cpu.native_int8 else "no",
        ).set(1)
        speedup = entry["speedup"]
        self.precision_speedup.labels(backend.info.name).set(
            float(speedup) if isinstance(speedup, int | float) else 1.0
        )

    def record_version(self, name: str, version: ModelVersion | None, serving: bool) -> None:
        """Mark ``version`` of ``name`` as served (or no longer)."""
        if version is None:
            return
        labels = (name, version.sha256, version.path.name)
        if serving:
            self.model_version.labels(*labels).set(1)
        else:
            with contextlib.suppress(KeyError):
                self.model_version.remove(*labels)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
