"""A resumable batch job over a collection: skip what an earlier run finished, hand the rest to
an engine, write each result as it arrives and journal it in the manifest.

The engine (``ccnet.inference.ray_engine``) only decides where ``render_item`` runs; this
module is the driver's side and never imports Ray. Results are written by the driver, so the
output directory need only exist on the machine that runs the command: a cluster's workers
read inputs (a shared path or a URI) and send back the rendered bytes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ccnet.inference.manifest import Manifest, input_stamp, is_done, make_row
from ccnet.inference.predict import (
    Item,
    ModelLoadError,
    Models,
    PredictConfig,
    Rendered,
    render_item,
    write_outputs,
)

__all__ = ["BatchReport", "Outcome", "attempt", "run_batch"]


@dataclass(frozen=True)
class Outcome:
    """What a worker made of one input: ``rendered``, or an ``error`` (``fatal`` when the
    model itself could not be loaded: no input can succeed, so the job stops)."""

    index: int  # position in the list handed to the engine
    worker: str
    rendered: Rendered | None = None
    error: str | None = None
    fatal: bool = False


@dataclass(frozen=True)
class BatchReport:
    """How a job went: inputs in total, skipped (done by an earlier run), segmented by this
    run, and failed (this run's failures and the earlier ones that stand)."""

    inputs: int
    skipped: int
    segmented: int
    failed: int
    seconds: float
    manifest: str


def attempt(index: int, item: Item, models: Models, worker: str) -> Outcome:
    """Segment one input on a worker; any failure of the input becomes an error outcome
    (a corrupt file in a million is a manifest row, not a failed job)."""
    try:
        return Outcome(index, worker, rendered=render_item(item, models))
    except ModelLoadError as error:
        return Outcome(index, worker, error=str(error), fatal=True)
    except Exception as error:  # the input's own failure, recorded in its row
        text = str(error) or type(error).__name__
        message = text if item.source in text else f"{item.source}: {text}"
        return Outcome(index, worker, error=message)


Engine = Callable[[list[Item]], Iterable[Outcome]]


def run_batch(
    items: list[Item],
    config: PredictConfig,
    out_dir: Path,
    engine: Engine,
    *,
    progress: bool = True,
) -> BatchReport:
    """Run ``engine`` over the inputs the manifest does not already record as done.

    Raises:
        ValueError: the model could not be loaded (nothing can succeed).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out_dir)
    previous = manifest.previous()
    options = config.options_key()
    hashes = Models(config)  # the driver's hashes of the model files; it loads no model
    rows: dict[str, dict] = {}
    stamps: dict[str, str | None] = {}
    todo: list[Item] = []
    for item in items:
        stamps[item.key] = stamp = input_stamp(item.path)
        target = item.target.as_posix()
        row = previous.get(item.key)
        if is_done(row, stamp=stamp, target=target, options=options, model_hash=hashes.model_hash):
            rows[item.key] = row
        else:
            todo.append(item)
    skipped = len(items) - len(todo)
    bar = tqdm(
        total=len(todo), desc="segmenting", unit="file", file=sys.stderr, disable=not progress
    )
    try:
        for outcome in _outcomes(engine, todo):
            item = todo[outcome.index]
            if outcome.fatal:
                raise ValueError(outcome.error)
            row = _row(out_dir, item, outcome, options, hashes, stamps[item.key])
            if row["error"] is not None:
                bar.write(f"ccnet predict: error: {row['error']}", file=sys.stderr)
            manifest.append(row)
            rows[item.key] = row
            bar.update()
    finally:
        bar.close()
        keys = {item.key for item in items}
        ordered = [rows[item.key] for item in items if item.key in rows]
        ordered += [row for key, row in previous.items() if key not in keys]
        manifest.finish(ordered)
    failed = sum(rows[item.key]["error"] is not None for item in items)
    return BatchReport(
        inputs=len(items),
        skipped=skipped,
        segmented=sum(rows[item.key]["error"] is None for item in todo),
        failed=failed,
        seconds=time.perf_counter() - start,
        manifest=str(manifest.parquet),
    )


def _outcomes(engine: Engine, todo: list[Item]) -> Iterator[Outcome]:
    if todo:
        yield from engine(todo)


def _row(
    out_dir: Path, item: Item, outcome: Outcome, options: str, hashes: Models, stamp: str | None
) -> dict:
    common = {
        "key": item.key,
        "source": item.source,
        "input_stamp": stamp,
        "target": item.target.as_posix(),
        "options": options,
        "worker": outcome.worker,
    }
    rendered = outcome.rendered
    if rendered is None:
        return make_row(**common, error=outcome.error)
    expected = hashes.model_hash(rendered.kind)
    if rendered.model_sha256 != expected:
        return make_row(
            **common,
            kind=rendered.kind,
            error=f"{item.source}: the {rendered.kind} model file on worker {outcome.worker} "
            f"(sha256 {rendered.model_sha256}) differs from this machine's ({expected})",
        )
    return make_row(
        **common,
        kind=rendered.kind,
        outputs=write_outputs(out_dir, item, rendered),
        summary=rendered.summary,
        model_sha256=rendered.model_sha256,
        seconds=rendered.seconds,
    )
