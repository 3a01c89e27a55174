"""Checks on what a model file says about itself: a model file is untrusted input too.

Whoever can write to the models folder controls a checkpoint's or sidecar's metadata, and
numbers from it size allocations at load (the clip window the warm-up and the precision gate
run, the side of the scenes the gate renders) and names from it reach HTTP headers, logs and
the demo page. Every such value is checked here, once, before anything is built from it; a
model whose metadata breaks a rule is refused with a message naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_CLASSES",
    "MAX_CLIP_LENGTH",
    "MAX_GENERATOR_SIDE",
    "MAX_NAME_LENGTH",
    "MetadataError",
    "check_metadata",
    "check_model_name",
    "name_key",
]

MAX_CLASSES = 1024  # more than ADE20K's 150 or COCO-Stuff's 182, by far
MAX_CLASS_NAME = 64
MAX_CLIP_LENGTH = 64  # frames per window; the zoo's clip models use 4 and 8
MAX_GENERATOR_SIDE = 1024  # ``ccnet synth --size``: the precision gate renders scenes this big
MAX_NAME_LENGTH = 128
# a model name: ASCII letters, digits and . _ + - (it is a URL path segment, an HTTP header
# value and a log field), starting with a letter or digit
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class MetadataError(ValueError):
    """A model file's metadata breaks a rule (the message names the file and the field)."""


def check_model_name(name: str, where: str = "model name") -> str:
    """``name`` when it is a safe model name, else ``MetadataError``."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise MetadataError(f"{where}: a model name has 1 to {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(name):
        raise MetadataError(
            f"{where} {name!r}: a model name may hold ASCII letters, digits and . _ + - only, "
            "starting with a letter or digit"
        )
    return name


def name_key(name: str) -> str:
    """Two names that differ only in case name the same model (``Tiny`` and ``tiny`` would
    look alike in a URL, a log and a folder on a case-insensitive file system)."""
    return name.casefold()


def _int(value: Any, low: int, high: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MetadataError(f"{where} must be an integer from {low} to {high}, got {value!r}")
    return value


def _classes(meta: Mapping[str, Any], where: str) -> None:
    classes, palette = meta.get("classes"), meta.get("palette")
    if not isinstance(classes, list) or not 0 < len(classes) <= MAX_CLASSES:
        raise MetadataError(f"{where}: 'classes' must list 1 to {MAX_CLASSES} names")
    for index, name in enumerate(classes):
        if not isinstance(name, str) or not 0 < len(name) <= MAX_CLASS_NAME:
            raise MetadataError(
                f"{where}: class {index} must be a name of 1 to {MAX_CLASS_NAME} characters"
            )
        if not name.isprintable():
            raise MetadataError(f"{where}: class {index} {name!r} holds control characters")
    if not isinstance(palette, list) or len(palette) != len(classes):
        raise MetadataError(f"{where}: 'palette' must hold one colour per class")
    for index, colour in enumerate(palette):
        if not isinstance(colour, list | tuple) or len(colour) != 3:
            raise MetadataError(f"{where}: palette colour {index} must be [r, g, b]")
        for channel in colour:
            _int(channel, 0, 255, f"{where}: palette colour {index}")


def check_metadata(meta: Mapping[str, Any], source: Path | str) -> None:
    """Refuse metadata whose numbers or names are out of bounds (``MetadataError``).

    Checked: classes (1 to ``MAX_CLASSES`` printable names, one colour each), the model name
    (``check_model_name``), a clip model's window (``clip_length``, 1 to ``MAX_CLIP_LENGTH``)
    and the training data generator's scene side and seed (what the precision gate renders).
    """
    where = str(source)
    _classes(meta, where)
    config = meta.get("config") or {}
    if not isinstance(config, Mapping):
        raise MetadataError(f"{where}: 'config' must be an object")
    if config.get("name") is not None:
        check_model_name(config["name"], f"{where}: config.name")
    if config.get("clip_length") is not None:
        _int(config["clip_length"], 1, MAX_CLIP_LENGTH, f"{where}: config.clip_length")
    provenance = meta.get("provenance") or {}
    if not isinstance(provenance, Mapping):
        raise MetadataError(f"{where}: 'provenance' must be an object")
    for holder, label in ((provenance, "provenance"), (provenance.get("checkpoint"), "checkpoint")):
        generator = holder.get("data_generator") if isinstance(holder, Mapping) else None
        if generator is None:
            continue
        if not isinstance(generator, Mapping):
            raise MetadataError(f"{where}: {label}.data_generator must be an object")
        if "size" in generator:
            _int(generator["size"], 8, MAX_GENERATOR_SIDE, f"{where}: data_generator.size")
        if "seed" in generator:
            _int(generator["seed"], 0, 2**63 - 1, f"{where}: data_generator.seed")
