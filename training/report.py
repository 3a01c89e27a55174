"""``ccnet evaluate --report DIR``: the scores as files a person can look at.

::

    DIR/report.json     everything ``--json`` prints, plus the confusion matrix (pixel counts)
    DIR/confusion.png   the confusion matrix, each row (a true class) as fractions of its pixels
    DIR/iou.png         per-class IoU as bars, the mIoU as a line

Rows are normalised because raw counts are dominated by the largest class: a row shows where
a class's pixels went, which is what a confusion is. matplotlib (the ``train`` extra) draws
off-screen (Agg), so no display is needed; files are written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ccnet.model.files import write_bytes_atomic, write_json_atomic

__all__ = ["write_report"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--report needs matplotlib (pip install -e '.[train]')") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def confusion_chart(matrix: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """PNG of the row-normalised confusion matrix (rows: truth, columns: prediction)."""
    plt = _pyplot()
    counts = matrix.astype(np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(classes)
    side = min(max(4.0, 0.45 * k + 2.0), 16.0)
    figure, axes = plt.subplots(figsize=(side + 1.2, side))
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = [_short(c) for c in classes]
    axes.set_xticks(range(k), labels, rotation=60, ha="right")
    axes.set_yticks(range(k), labels)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    if k <= 25:  # numbers stay legible up to about 25 classes
        for i in range(k):
            for j in range(k):
                if rows[i, 0] > 0:
                    value = fractions[i, j]
                    colour = "white" if value > 0.5 else "black"
                    axes.text(
                        j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour
                    )
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    data = _png(figure)
    plt.close(figure)
    return data


def iou_chart(per_class: dict[str, float | None], miou: float | None, title: str) -> bytes:
    """PNG of per-class IoU bars (absent classes marked n/a) and the mIoU line."""
    plt = _pyplot()
    names = list(per_class)
    # percent, as every human-facing figure of ccnet (JSON keeps fractions, labelled)
    values = [100 * per_class[n] if per_class[n] is not None else 0.0 for n in names]
    figure, axes = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2.0), 4.0))
    bars = axes.bar(range(len(names)), values, color="#3b75af")
    for bar, name in zip(bars, names, strict=True):
        shown = "n/a" if per_class[name] is None else f"{100 * per_class[name]:.1f}"
        axes.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1.0, shown,
                  ha="center", va="bottom", fontsize=7)  # fmt: skip
    if miou is not None:
        axes.axhline(100 * miou, color="#d62728", linestyle="--", label=f"mIoU {100 * miou:.1f} %")
        axes.legend(loc="upper right")
    axes.set_xticks(range(len(names)), [_short(n) for n in names], rotation=60, ha="right")
    axes.set_ylim(0.0, 108.0)
    axes.set_ylabel("IoU (%)")
    axes.set_title(title)
    data = _png(figure)
    plt.close(figure)
    return data


def write_report(
    folder: str | Path, result: dict[str, Any], matrix: np.ndarray, classes: Sequence[str]
) -> dict[str, str]:
    """Write ``report.json``, ``confusion.png`` and ``iou.png`` into ``folder``; their paths.

    Args:
        folder: created if needed.
        result: the evaluation's summary (as ``ccnet evaluate --json`` prints it).
        matrix: (K, K) confusion counts, rows the true class.
        classes: the K class names.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    title = (
        f"{result.get('model', 'model')} on {result.get('split', '')} ({result.get('mode', '')})"
    )
    paths = {
        "json": out / "report.json",
        "confusion": out / "confusion.png",
        "iou": out / "iou.png",
    }
    write_bytes_atomic(paths["confusion"], confusion_chart(matrix, classes, title))
    write_bytes_atomic(paths["iou"], iou_chart(result["per_class_iou"], result.get("mIoU"), title))
    payload = {**result, "classes": list(classes), "confusion_matrix": matrix.tolist()}
    write_json_atomic(paths["json"], payload)
    return {name: str(path) for name, path in paths.items()}
