"""What a model was trained on, said where users look (/v1/models, the demo page, ``ccnet
models``), and the two ways to real weights when it is a demo model.

The bundled models segment synthetic textures; on a photograph they still paint regions, and
without this note a new user takes the astronaut's "stripes" for a broken service. The card is
read from the checkpoint's provenance (``ccnet train`` records the data set and the
generator), which an ONNX sidecar carries along under ``provenance.checkpoint``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["REAL_WEIGHTS", "training_card"]

# The two ways to weights that know real classes, with the commands (README: "Real weights").
REAL_WEIGHTS = {
    "convert": "ccnet convert --from official|mmseg CHECKPOINT.pth -o model.pt && "
    "ccnet serve --model model.pt",
    "train": "ccnet train --model ccnet-r50 --data DIR --out runs/r50 && "
    "ccnet serve --model runs/r50/best.pt",
}


def _provenance(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    provenance = meta.get("provenance") or {}
    nested = provenance.get("checkpoint")  # an export's sidecar nests the checkpoint's
    return nested if isinstance(nested, Mapping) else provenance


def training_card(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``{"data", "synthetic", "val_miou", "summary", "real_weights"}`` for a checkpoint's (or
    sidecar's) metadata; unknown fields are None, ``real_weights`` only for synthetic data."""
    provenance = _provenance(meta)
    generator = provenance.get("data_generator") or {}
    synthetic = generator.get("name") == "ccnet synth"
    classes = ", ".join(str(c) for c in meta.get("classes", []))
    if synthetic:
        counts = generator.get("counts") or {}
        kind = generator.get("kind", "images")
        data = (
            f"ccnet synth --kind {kind} --seed {generator.get('seed')}: "
            f"{counts.get('train', '?')} train / {counts.get('val', '?')} val synthetic "
            f"{'clips' if kind == 'clips' else 'scenes'} of textures"
        )
        summary = (
            f"A demo model: it knows synthetic textures ({classes}), not real-world classes. "
            "On a photograph it segments textures, which shows the pipeline working, nothing "
            "more. For real weights convert an official CCNet or mmsegmentation checkpoint, "
            "or train on your data."
        )
    else:
        data = provenance.get("data") or provenance.get("source")
        summary = f"Trained on {data}." if data else "Training data not recorded."
    miou = provenance.get("best_val_mIoU", provenance.get("val_mIoU"))
    return {
        "data": data,
        "synthetic": synthetic,
        "val_miou": round(float(miou), 4) if isinstance(miou, int | float) else None,
        "summary": summary,
        "real_weights": dict(REAL_WEIGHTS) if synthetic else None,
    }
