"""Per-model inference statistics in the form Triton reports them (``/v2/models/NAME/stats``).

Recorded by the model's micro-batcher (``service.batching``), so /v1 and /v2 requests count
alike. One *inference request* here is one image through the batcher (a /v2 request with a
batch of N images is N of them, as N separate requests to Triton would be):

* ``success``/``fail``: images answered or failed, with the nanoseconds from entering the
  queue to the answer (failures: a full queue, a deadline passed while queued, a forward
  pass that raised);
* ``queue``: nanoseconds waited before the forward pass began;
* ``compute_input``/``compute_infer``/``compute_output``: stacking the batch, the forward
  pass, handing the outputs back, per image, and per batch size in ``batch_stats``;
* ``inference_count``/``execution_count``: images computed, forward passes run;
* ``last_inference``: milliseconds since the epoch of the last forward pass.

The scaling, padding and mapping back of an image (``Segmenter.prepare``/``finish``) run in
the request, outside the batcher, and are not counted. A model's statistics start at zero
when it is loaded, a hot-reloaded version included (Triton's are per loaded version too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["InferenceStatistics"]


@dataclass
class _Duration:
    """Triton's StatisticDuration: how many, and their nanoseconds together."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, ns)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


_REQUEST_PARTS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_BATCH_PARTS = ("compute_input", "compute_infer", "compute_output")


class InferenceStatistics:
    """Thread-safe counters of one served model (written by batcher threads, read by routes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = {part: _Duration() for part in _REQUEST_PARTS}
        self._batches: dict[int, dict[str, _Duration]] = {}
        self._inferences = 0
        self._executions = 0
        self._last_ms = 0

    def record_failure(self, ns: int) -> None:
        """One image that failed (refused by a full queue, expired, or its batch raised)."""
        with self._lock:
            self._requests["fail"].add(ns)

    def record_batch(
        self,
        *,
        waited_ns: Iterable[int],
        answered_ns: Iterable[int],
        input_ns: int,
        infer_ns: int,
        output_ns: int,
    ) -> None:
        """One forward pass over a batch: each image's queue wait and total time, and the
        batch's stacking, forward and hand-back times."""
        waited, answered = list(waited_ns), list(answered_ns)
        size = len(answered)
        with self._lock:
            requests = self._requests
            for ns in waited:
                requests["queue"].add(ns)
            for ns in answered:
                requests["success"].add(ns)
            # every image of the batch spent the batch's compute time (Triton counts alike)
            requests["compute_input"].add(input_ns * size, size)
            requests["compute_infer"].add(infer_ns * size, size)
            requests["compute_output"].add(output_ns * size, size)
            batch = self._batches.setdefault(size, {part: _Duration() for part in _BATCH_PARTS})
            batch["compute_input"].add(input_ns)
            batch["compute_infer"].add(infer_ns)
            batch["compute_output"].add(output_ns)
            self._inferences += size
            self._executions += 1
            self._last_ms = time.time_ns() // 1_000_000

    def model_stats(self, name: str, version: str) -> dict[str, object]:
        """Triton's ModelStatistics entry for this model, as JSON."""
        with self._lock:
            inference = {part: d.to_dict() for part, d in self._requests.items()}
            # the response cache Triton reports is not a feature here: always empty
            inference |= {"cache_hit": _Duration().to_dict(), "cache_miss": _Duration().to_dict()}
            batches = [
                {"batch_size": size, **{part: d.to_dict() for part, d in parts.items()}}
                for size, parts in sorted(self._batches.items())
            ]
            return {
                "name": name,
                "version": version,
                "last_inference": self._last_ms,
                "inference_count": self._inferences,
                "execution_count": self._executions,
                "inference_stats": inference,
                "batch_stats": batches,
                "memory_usage": [],
            }
