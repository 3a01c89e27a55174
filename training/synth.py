"""``ccnet synth``: write the synthetic scene data set (images or clips) in the plain-folder
layout, deterministic from a seed. The scenes themselves, and why they look as they do, are
``ccnet.inference.synth_scenes``'s (the precision gate renders the same ones again)."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ccnet.inference.synth_scenes import (
    CLASSES,
    CORRUPTIONS,
    GENERATOR_VERSION,
    KINDS,
    PALETTE,
    SPLITS,
    SynthKind,
    render_clip,
    render_scene,
    sample_rng,
)
from ccnet.model.files import write_bytes_atomic, write_json_atomic
from ccnet.training.datasets import SplitIndex

__all__ = [
    "CLASSES",
    "CORRUPTIONS",
    "CORRUPTION_GROUPS",
    "PALETTE",
    "SynthKind",
    "corruption_groups",
    "generate",
    "render_clip",
    "render_scene",
]

CORRUPTION_GROUPS: tuple[str, ...] = ("all", "clean", "corrupted", *CORRUPTIONS)
"""The groups of ``corruption_groups``, in reporting order."""


# --------------------------------------------------------------------------- writing


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to mix with existing files; ``overwrite`` only replaces an earlier synth output."""
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = out / "classes.json"
    made_by_us = False
    if manifest.is_file():
        try:
            made_by_us = "generator" in json.loads(manifest.read_text())
        except (ValueError, OSError):
            made_by_us = False
    if not overwrite:
        raise ValueError(f"{out}: folder is not empty; choose a new folder or pass --overwrite")
    if not made_by_us:
        raise ValueError(
            f"{out}: not written by `ccnet synth` (no generator entry in classes.json); "
            "refusing to overwrite it"
        )
    for split in SPLITS:
        if (out / split).exists():
            shutil.rmtree(out / split)


def generate(
    out: str | Path,
    kind: SynthKind,
    n: int,
    *,
    n_val: int | None = None,
    seed: int = 0,
    size: int = 128,
    frames: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    hold_out: tuple[str, ...] = (),
) -> dict[str, int]:
    """Write a synthetic data set in the plain-folder (or clip-folder) layout.

    Layout: ``OUT/classes.json`` (names, palette, generator settings), and per split
    ``OUT/SPLIT/images/NNNNNN.png`` + ``OUT/SPLIT/masks/NNNNNN.png`` for images, or
    ``OUT/SPLIT/clip_NNNN/{images,masks}/NNN.png`` + ``corruptions.json`` for clips.

    Args:
        out: destination folder (new or empty, or an earlier output with ``overwrite``).
        kind: ``"images"`` or ``"clips"``.
        n: training samples (images or clips).
        n_val: validation samples; default ``max(1, n // 8)``.
        seed: the data set's seed; the same seed writes byte-identical files.
        size: image side in pixels (>= 32).
        frames: frames per clip (clips only).
        overwrite: replace an earlier ``ccnet synth`` output in ``out``.
        progress: show a progress bar.
        hold_out: corruption kinds left out of the *train* split's clips (val keeps every
            kind): a model that scores well on a held-out kind borrows from neighbouring frames
            instead of having learnt that corruption. Recorded in ``classes.json``.

    Returns:
        Number of samples written per split.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'images' or 'clips', got {kind!r}")
    if n < 1 or size < 32 or frames < 1:
        raise ValueError(f"need n >= 1, size >= 32, frames >= 1; got {n}, {size}, {frames}")
    unknown = sorted(set(hold_out) - set(CORRUPTIONS))
    if unknown:
        raise ValueError(f"unknown corruption kind(s) {unknown}; choose from {CORRUPTIONS}")
    train_kinds = tuple(k for k in CORRUPTIONS if k not in hold_out)
    if not train_kinds:
        raise ValueError(f"hold_out leaves no corruption kind for training: {hold_out}")
    if hold_out and kind != "clips":
        raise ValueError("hold_out applies to clips only (images have no corrupted frames)")
    counts = {"train": n, "val": max(1, n // 8) if n_val is None else n_val}
    if counts["val"] < 0:
        raise ValueError(f"n_val must be >= 0, got {n_val}")
    root = Path(out)
    _prepare(root, overwrite)
    write_json_atomic(
        root / "classes.json",
        {
            "classes": list(CLASSES),
            "palette": [list(c) for c in PALETTE],
            "generator": {
                "name": "ccnet synth",
                "version": GENERATOR_VERSION,
                "kind": kind,
                "seed": seed,
                "size": size,
                "frames": frames if kind == "clips" else 1,
                "counts": counts,
                **({"held_out": sorted(hold_out)} if hold_out else {}),
            },
        },
    )
    total = sum(counts.values())
    with tqdm(total=total, desc=f"synth {kind}", unit=kind[:-1], disable=not progress) as bar:
        for split, count in counts.items():
            for index in range(count):
                rng = sample_rng(seed, kind, split, index)
                if kind == "images":
                    image, mask = render_scene(rng, size)
                    write_bytes_atomic(root / split / "images" / f"{index:06d}.png", _png(image))
                    write_bytes_atomic(root / split / "masks" / f"{index:06d}.png", _png(mask))
                else:
                    kinds = train_kinds if split == "train" else CORRUPTIONS
                    images, masks, corrupted = render_clip(rng, size, frames, kinds)
                    clip = root / split / f"clip_{index:04d}"
                    for frame, (image, mask) in enumerate(zip(images, masks, strict=True)):
                        write_bytes_atomic(clip / "images" / f"{frame:03d}.png", _png(image))
                        write_bytes_atomic(clip / "masks" / f"{frame:03d}.png", _png(mask))
                    write_json_atomic(
                        clip / "corruptions.json",
                        {f"{frame:03d}": name for frame, name in sorted(corrupted.items())},
                    )
                bar.update(1)
    return counts


def corruption_groups(index: SplitIndex) -> Callable[[int], list[str]]:
    """Frame index -> its groups in ``CORRUPTION_GROUPS``, from the ``corruptions.json`` that
    ``generate`` writes in every clip folder: ``all``, then ``clean`` or ``corrupted`` and the
    corruption's name. This is what shows whether a model uses temporal context.

    Raises:
        ValueError: ``index`` is not a clip split, or a clip's record is missing or unreadable.
    """
    if index.clips is None:
        raise ValueError(
            f"{index.root}: not a clip data set (--corruptions needs `ccnet synth --kind clips`)"
        )
    kinds: dict[int, str] = {}
    for name, clip in zip(index.clip_names, index.clips, strict=True):
        path = index.root / index.split / name / "corruptions.json"
        try:
            corrupted = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable corruption record ({e})") from e
        for i in clip:
            kinds[i] = corrupted.get(index.frames[i].image.stem, "clean")

    def groups(frame: int) -> list[str]:
        kind = kinds[frame]
        return ["all", kind] if kind == "clean" else ["all", "corrupted", kind]

    return groups
