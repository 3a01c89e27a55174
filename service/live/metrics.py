"""Prometheus metrics of live sessions, registered in the service's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["StreamMetrics"]

_FRAME_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)


class StreamMetrics:
    """Sessions open, frames by outcome, per-frame latency and queue depth, by model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge(
            "ccnet_stream_sessions", "live sessions open, by model", ["model"], registry=registry
        )
        self.frames = Counter(
            "ccnet_stream_frames_total",
            "live frames by model and outcome (received, processed, skipped, invalid)",
            ["model", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "ccnet_stream_frame_seconds",
            "live frames: from receipt to the mask ready to send, by model",
            ["model"],
            buckets=_FRAME_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "ccnet_stream_queue_depth",
            "live frames waiting to be processed, all sessions of a model",
            ["model"],
            registry=registry,
        )
        self.closes = Counter(
            "ccnet_stream_closes_total",
            "live sessions closed, by reason (end, disconnect, or the error code)",
            ["reason"],
            registry=registry,
        )
