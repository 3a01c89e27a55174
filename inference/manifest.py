"""The manifest of a batch job: one row per input in ``OUT/manifest.jsonl`` and
``OUT/manifest.parquet``, and what a re-run may skip.

The JSON lines file is also the job's journal: a row is appended (and flushed) as soon as the
input's results are written, so a job killed halfway leaves a record of what it finished; a
re-run reads it, skips those inputs and at the end rewrites both files whole (atomically, one
row per input, the latest winning). Parquet is for data frames (pandas, Polars, DuckDB, Spark);
the JSON lines are for ``jq``. A half-written last line of a killed job is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

__all__ = [
    "MANIFEST_JSONL",
    "MANIFEST_PARQUET",
    "Manifest",
    "input_stamp",
    "is_done",
    "make_row",
]

MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_PARQUET = "manifest.parquet"

# column → Arrow type name; every row has every column (None where it does not apply)
_COLUMNS = {
    "input": "string",
    "source": "string",
    "input_stamp": "string",
    "target": "string",
    "kind": "string",
    "outputs": "list<string>",
    "model": "string",
    "model_sha256": "string",
    "options": "string",
    "width": "int64",
    "height": "int64",
    "frames": "int64",
    "class_fractions": "map<string, double>",
    "inference_ms": "double",
    "seconds": "double",
    "worker": "string",
    "error": "string",
    "finished_at": "string",
}


def make_row(
    *,
    key: str,
    source: str,
    input_stamp: str | None,
    target: str,
    options: str,
    worker: str,
    kind: str | None = None,
    outputs: list[str] | None = None,
    summary: dict[str, Any] | None = None,
    model_sha256: str | None = None,
    seconds: float | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One manifest row: a result (``summary`` from ``render_item``) or an ``error``."""
    summary = summary or {}
    size = summary.get("size") or [None, None]
    return {
        "input": key,
        "source": source,
        "input_stamp": input_stamp,
        "target": target,
        "kind": kind,
        "outputs": list(outputs or []),
        "model": summary.get("model"),
        "model_sha256": model_sha256,
        "options": options,
        "width": size[0],
        "height": size[1],
        "frames": summary.get("frames"),
        "class_fractions": summary.get("class_fractions"),
        "inference_ms": summary.get("inference_ms"),
        "seconds": None if seconds is None else round(seconds, 4),
        "worker": worker,
        "error": error,
        "finished_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def input_stamp(path: Path | None) -> str | None:
    """A local input's size and modification time: a file replaced since the earlier run is
    done again. None for URIs and samples (a remote file is judged by its outputs alone)."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def is_done(
    row: dict[str, Any] | None,
    *,
    stamp: str | None,
    target: str,
    options: str,
    model_hash: Callable[[str], str | None],
) -> bool:
    """Whether an input's earlier row may stand, so a re-run skips it.

    A success stands when the options, the result path and the model content (hash of the
    model file for its kind) are the same, the input is unchanged (``stamp``) and every file
    it wrote is still there. A failure stands for an unchanged local file (a corrupt file
    stays corrupt; the row and the non-zero exit remain); a URI that failed is tried again,
    as its failure may have been the network's. Untrained ``--model`` weights never match.
    """
    if row is None or row.get("options") != options or row.get("target") != target:
        return False
    if row.get("input_stamp") != stamp:
        return False
    if row.get("error") is not None:
        return stamp is not None
    expected = model_hash(row.get("kind") or "image")
    if expected is None or row.get("model_sha256") != expected or not row.get("outputs"):
        return False
    return all(Path(path).is_file() for path in row["outputs"])


class Manifest:
    """The manifest files in an output directory."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.jsonl = out_dir / MANIFEST_JSONL
        self.parquet = out_dir / MANIFEST_PARQUET
        self._journal: IO[str] | None = None

    def previous(self) -> dict[str, dict[str, Any]]:
        """The rows of earlier runs by input, the latest for each (empty when there is none)."""
        rows: dict[str, dict[str, Any]] = {}
        if not self.jsonl.is_file():
            return rows
        with self.jsonl.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # the torn last line of a killed job
                    continue
                if isinstance(row, dict) and isinstance(row.get("input"), str):
                    rows[row["input"]] = row
        return rows

    def append(self, row: dict[str, Any]) -> None:
        """Journal one finished input (flushed: it survives the process being killed)."""
        if self._journal is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._journal = self.jsonl.open("a", encoding="utf-8")
        self._journal.write(json.dumps(row) + "\n")
        self._journal.flush()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def finish(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rewrite both files whole from ``rows`` (one per input), atomically."""
        from ccnet.model.files import write_bytes_atomic, write_text_atomic

        self.close()
        rows = list(rows)
        write_text_atomic(self.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
        write_bytes_atomic(self.parquet, _parquet_bytes(rows))


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            "the Parquet manifest needs pyarrow: pip install 'ccnet-stack[batch]'"
        ) from None
    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "double": pa.float64(),
        "list<string>": pa.list_(pa.string()),
        "map<string, double>": pa.map_(pa.string(), pa.float64()),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in _COLUMNS.items()])
    columns = {name: [row.get(name) for row in rows] for name in _COLUMNS}
    fractions = columns["class_fractions"]
    columns["class_fractions"] = [None if f is None else list(f.items()) for f in fractions]
    table = pa.table(columns, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
