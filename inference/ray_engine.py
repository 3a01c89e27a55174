"""``ccnet predict --engine ray``: the inputs go through a Ray Data actor pool.

Each actor loads the models once (``Models``) and maps batches of inputs to their rendered
results with the same ``render_item`` that ``ccnet predict`` runs in one process, so the
masks are byte for byte the same. Ray runs it on this machine (a local Ray started for the
job) or on a cluster (``address``), with no change to the code: an actor that dies has its
batch retried by Ray. The driver writes the results and the manifest (``batch.run_batch``).

The only module that imports ``ray``; without it the engine says which extra to install.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from ccnet.inference.batch import Outcome, attempt
from ccnet.inference.predict import BATCH_EXTRA, Item, Models, PredictConfig

__all__ = ["RayOptions", "ray_outcomes"]


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the job runs.

    Args:
        address: a running cluster (``ray://host:10001`` or ``host:6379``, or ``auto``);
            None starts a local Ray for the job and stops it after.
        workers: actors in the pool (each loads the models once).
        batch_size: inputs per batch handed to an actor.
        cpus_per_worker: CPUs each actor reserves; its forward passes use as many threads.
        gpus_per_worker: GPUs each actor reserves (fractions share one GPU).
        local_cpus: CPUs a local Ray may use (None: this machine's).
    """

    address: str | None = None
    workers: int = 1
    batch_size: int = 8
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    local_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1 or self.batch_size < 1:
            raise ValueError("workers and batch_size must be >= 1")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("cpus_per_worker must be > 0 and gpus_per_worker >= 0")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError(f"--engine ray needs Ray: {BATCH_EXTRA}") from None
    return ray


class _SegmentBatch:
    """The callable class of the actor pool: models loaded once per actor, then each batch of
    inputs (JSON items) mapped to pickled ``Outcome``s."""

    def __init__(self, config: PredictConfig) -> None:
        import ray

        self.models = Models(config)
        context = ray.get_runtime_context()
        self.worker = f"{context.get_node_id()[:8]}:{os.getpid()}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        outcomes = [
            pickle.dumps(attempt(int(index), Item.from_json(str(task)), self.models, self.worker))
            for index, task in zip(batch["index"], batch["task"], strict=True)
        ]
        return {"outcome": np.array(outcomes, dtype=object)}


def _absolute(item: Item) -> Item:
    return item if item.path is None else replace(item, path=item.path.absolute())


def _worker_config(config: PredictConfig, options: RayOptions) -> PredictConfig:
    """The config as an actor runs it: its forward passes use the CPUs it reserved, one at a
    time (Ray, not threads inside one actor, spreads the work)."""
    threads = max(1, math.floor(options.cpus_per_worker))
    load = config.load.replace(threads=threads, inference_workers=1, processes=1)
    return replace(config, load=load)


def ray_outcomes(
    items: list[Item], config: PredictConfig, options: RayOptions
) -> Iterator[Outcome]:
    """Every item's ``Outcome``, in the order they finish.

    Raises:
        ValueError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        _init(ray, options)
    try:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows one bar with files/s and ETA
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        # workers run in folders of their own: they get absolute paths (the manifest keeps
        # the inputs as given)
        tasks = [{"index": i, "task": _absolute(item).to_json()} for i, item in enumerate(items)]
        # enough blocks that every actor gets work, few enough that each holds a few batches
        blocks = max(1, min(len(tasks), max(4 * options.workers, len(tasks) // options.batch_size)))
        dataset = ray.data.from_items(tasks, override_num_blocks=blocks)
        # Ray Data restarts a dead actor and retries its batch by default (max_restarts=-1)
        results = dataset.map_batches(
            _SegmentBatch,
            fn_constructor_kwargs={"config": _worker_config(config, options)},
            batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=min(options.workers, len(tasks))),
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker or None,
        )
        for row in results.iter_rows():
            yield pickle.loads(row["outcome"])
    finally:
        if started_here:
            ray.shutdown()


def _init(ray: Any, options: RayOptions) -> None:
    """Join the cluster at ``options.address``, or start a local Ray."""
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING}
    try:
        if options.address:
            ray.init(address=options.address, **quiet)
        else:
            # never fewer logical CPUs than the pool reserves: Ray would wait for them forever
            wanted = math.ceil(options.workers * options.cpus_per_worker)
            cpus = options.local_cpus or max(os.cpu_count() or 1, wanted)
            # "local": a fresh Ray for this job, never a `ray start` cluster found on the
            # machine (that is what --address is for)
            ray.init(address="local", num_cpus=cpus, **quiet)
    except (ConnectionError, RuntimeError) as error:
        where = options.address or "a local Ray"
        raise ValueError(f"cannot start or join Ray at {where}: {error}") from None
