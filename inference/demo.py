"""The demo models that ship inside the package, and how a name or a path becomes a file.

``ccnet-tiny`` (images) and ``ccnet3d-tiny`` (clips) are small CCNets trained on the synthetic
scenes of ``ccnet synth`` (see ``assets/README.md``): the service serves them when no model is
named, ``ccnet predict`` uses them by default, and ``Segmenter.from_file("ccnet-tiny")`` loads
them by name.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ASSETS",
    "BUNDLED_MODELS",
    "DEMO_CLIP_MODEL",
    "DEMO_IMAGE_MODEL",
    "ZOO_CATALOG",
    "bundled_model",
    "resolve_model_file",
]

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_IMAGE_MODEL = "ccnet-tiny"
DEMO_CLIP_MODEL = "ccnet3d-tiny"
# served when no model is named
BUNDLED_MODELS = (ASSETS / f"{DEMO_IMAGE_MODEL}.pt", ASSETS / f"{DEMO_CLIP_MODEL}.pt")
# the zoo's table, readable without importing torch (``ccnet models``)
ZOO_CATALOG = ASSETS / "zoo.json"


def bundled_model(name: str) -> Path | None:
    """The bundled checkpoint called ``name`` (``ccnet-tiny``), or None."""
    path = ASSETS / f"{name}.pt"
    return path if "/" not in name and path.is_file() else None


def resolve_model_file(source: str | os.PathLike[str]) -> Path:
    """A model file from a path or a bundled demo name (a file of that name wins).

    Raises:
        FileNotFoundError: neither a file nor a bundled name; the message lists the names.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    bundled = bundled_model(str(source))
    if bundled is not None:
        return bundled
    if path.exists():
        raise FileNotFoundError(f"{path}: not a model file (a folder?)")
    names = ", ".join(p.stem for p in BUNDLED_MODELS)
    raise FileNotFoundError(
        f"{path}: no such model file (bundled demo models: {names}; "
        "`ccnet convert` or `ccnet train` make real ones)"
    )
