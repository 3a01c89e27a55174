"""Self-describing checkpoints: weights plus everything needed to use them.

File layout (``torch.save`` of plain data only, so it loads with ``weights_only=True``)::

    {"format": "ccnet-checkpoint", "version": 1,
     "state_dict": {name: Tensor},
     "meta": {"config": ModelConfig.to_dict(),       # rebuilds the architecture
              "classes": [str] * K,
              "palette": [[r, g, b]] * K,
              "normalization": {"mean", "std", "channel_order", "value_scale"},
              "provenance": {"created", "torch_version", "source", ...free-form...},
              ...any other JSON-like entries}}

``meta["normalization"]`` always equals ``meta["config"]["normalization"]``; it is repeated at the
top level for consumers that only need to feed the model. Loading never unpickles code, and
saving is atomic (a temporary file in the target directory, then ``os.replace``), so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ccnet.model.ccnet import CCNet, CCNet3D
from ccnet.model.files import save_torch_atomic
from ccnet.model.model_config import ModelConfig, Normalization
from ccnet.model.zoo import build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "complete_meta",
    "default_class_names",
    "default_palette",
    "load_checkpoint",
    "load_plain",
    "read_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "ccnet-checkpoint"
CHECKPOINT_VERSION = 1

# Cityscapes' 19 evaluation classes (train ids 0..18) and their official colours.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

PathLike = str | os.PathLike[str]


def default_class_names(num_classes: int) -> list[str]:
    """Cityscapes' names for 19 classes (the peers' checkpoints), else ``class_0`` …"""
    if num_classes == len(CITYSCAPES_CLASSES):
        return list(CITYSCAPES_CLASSES)
    return [f"class_{i}" for i in range(num_classes)]


def default_palette(classes: int | Sequence[str]) -> list[list[int]]:
    """Deterministic, pairwise distinct RGB colours, one per class.

    Cityscapes' classes get their official colours. Otherwise class ``i`` gets the colour whose
    bits interleave the bits of ``i + 1`` over R, G, B from the most significant bit down (the
    PASCAL VOC scheme, shifted so that no class is black): distinct for up to 2**24 - 1 classes,
    and the first few are far apart.

    Args:
        classes: the class names, or just how many there are.
    """
    if not isinstance(classes, int) and tuple(classes) == CITYSCAPES_CLASSES:
        return [list(c) for c in CITYSCAPES_PALETTE]
    count = classes if isinstance(classes, int) else len(classes)
    palette = []
    for index in range(count):
        code, rgb = index + 1, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= (code & 1) << bit
                code >>= 1
        palette.append(rgb)
    return palette


def _plain(value: Any, where: str) -> Any:
    """A copy of ``value`` as JSON-like data (tuples become lists); ValueError names the spot."""
    if value is None:
        return None
    for kind in (bool, int, float, str):  # bool before int; subclasses (TorchVersion) unwrapped
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"meta{where}: keys must be strings, got {key!r}")
            out[key] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(
        f"meta{where}: only plain data (dict, list, str, number, bool, None) may be stored, "
        f"got {type(value).__name__}"
    )


def complete_meta(model: CCNet, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``meta`` for ``model`` and fill what is missing with defaults.

    ``meta["config"]`` / ``meta["normalization"]`` may also be given as dataclasses.
    Fills ``config`` from ``model.config``, ``classes`` with ``default_class_names``,
    ``palette`` with ``default_palette``, ``normalization`` from the config, and adds
    ``provenance.created`` / ``provenance.torch_version``. A ``normalization`` given in ``meta``
    wins and is written into the config too, so the two never disagree.

    Raises:
        ValueError: the config is unknown or disagrees with the model (classes, video,
            ``align_corners``, weight shapes), a list has the wrong length, a colour is not
            three ints in 0..255, or a value is not plain data.
    """
    meta = dict(meta or {})
    if isinstance(meta.get("config"), ModelConfig):
        meta["config"] = meta["config"].to_dict()
    if isinstance(meta.get("normalization"), Normalization):
        meta["normalization"] = dataclasses.asdict(meta["normalization"])
    meta = _plain(meta, "")
    config_data = meta.get("config")
    if config_data is None:
        if model.config is None:
            raise ValueError(
                "meta has no 'config' and the model has no .config: build it with build_model "
                "or pass meta={'config': ModelConfig(...).to_dict(), ...}"
            )
        config_data = model.config.to_dict()
    config = ModelConfig.from_dict(config_data)
    if "normalization" in meta:
        norm = meta["normalization"]
        if not isinstance(norm, dict):
            raise ValueError("meta['normalization'] must be a dict")
        config = ModelConfig.from_dict({**config.to_dict(), "normalization": norm})
    if config.num_classes != model.num_classes:
        raise ValueError(
            f"meta config has {config.num_classes} classes but the model has {model.num_classes}"
        )
    if config.video != isinstance(model, CCNet3D):
        raise ValueError(f"meta config video={config.video} does not match the model")
    if config.align_corners != model.align_corners:
        raise ValueError(
            f"meta config align_corners={config.align_corners} but the model upsamples with "
            f"align_corners={model.align_corners}"
        )
    with torch.device("meta"):  # shapes only: catches a config that would not load these weights
        expected = build_model(config).state_dict()
    mismatch = _state_mismatch(expected, model.state_dict())
    if mismatch:
        raise ValueError(f"meta config {config.name!r} does not describe the model: {mismatch}")

    classes = meta.get("classes") or default_class_names(config.num_classes)
    if (
        not isinstance(classes, list)
        or len(classes) != config.num_classes
        or not all(isinstance(c, str) for c in classes)
    ):
        raise ValueError(f"meta['classes'] must be {config.num_classes} strings, got {classes!r}")
    palette = meta.get("palette") or default_palette(classes)
    if len(palette) != config.num_classes or not all(
        isinstance(c, list)
        and len(c) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
        for c in palette
    ):
        raise ValueError(
            f"meta['palette'] must be {config.num_classes} [r, g, b] triples of ints 0..255"
        )
    provenance = meta.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise ValueError("meta['provenance'] must be a dict")
    provenance.setdefault("created", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    provenance.setdefault("torch_version", str(torch.__version__))  # not TorchVersion

    config_dict = config.to_dict()
    return {
        **meta,
        "config": config_dict,
        "classes": list(classes),
        "palette": palette,
        "normalization": config_dict["normalization"],
        "provenance": provenance,
    }


def save_checkpoint(model: CCNet, meta: Mapping[str, Any] | None, path: PathLike) -> dict[str, Any]:
    """Write ``model``'s weights and metadata to ``path`` atomically.

    Args:
        model: the network; its ``config`` is recorded unless ``meta`` has one.
        meta: classes, palette, provenance… (see ``complete_meta`` for the defaults).
        path: destination; parent directories are created.

    Returns:
        The complete metadata that was written.
    """
    full_meta = complete_meta(model, meta)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "state_dict": state,
        "meta": full_meta,
    }
    save_torch_atomic(path, payload)
    return full_meta


def _looks_like_state_dict(obj: object) -> bool:
    if not isinstance(obj, Mapping):
        return False
    inner = obj.get("state_dict", obj)
    return isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values())


# torch's wordings of a refused global: "Unsupported global: GLOBAL x.y" (a class it does not
# allow) and "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"
_REFUSED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def load_plain(path: PathLike) -> object:
    """``torch.load`` restricted to tensors and plain containers, with errors that explain.

    This is the one place files are unpickled: ``weights_only=True`` never imports or runs
    code from the file, and everything lands on the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is corrupt or not a PyTorch file, or it holds Python objects
            other than plain data (the message names the first such object).
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"checkpoint file not found: {file}")
    if not file.is_file():
        raise ValueError(f"{file}: not a file")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        # in our words: torch's own text advises re-running with weights_only=False (which
        # would run the file's code) and carries terminal colour codes
        text = _ANSI.sub("", str(exc))
        refused = _REFUSED_GLOBAL.search(text)
        if refused is not None:
            raise ValueError(
                f"{file}: refusing to load, the file holds Python objects other than tensors and "
                f"plain data ({refused.group(1)}); it was not loaded and nothing in it ran"
            ) from None  # torch's text (its advice included) stays out of every report
        unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.DOTALL)
        if unpickler is not None:
            reason = unpickler.group(1).splitlines()[0]
        else:
            first_line = next((line for line in text.splitlines() if line.strip()), "")
            reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        if "weights_only" in reason or "safe_globals" in reason:
            reason = "it holds data that cannot be loaded without running code from the file"
        reason = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in reason[:300])
        raise ValueError(f"{file}: corrupt or not a PyTorch checkpoint ({reason})") from None


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load and validate the raw payload of a checkpoint (no model is built).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is unreadable or corrupt, holds Python objects other than plain
            data, or is not a ``ccnet-checkpoint`` of a supported version; the message names
            the file and the problem.
    """
    file = Path(path)
    payload = load_plain(file)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        hint = ""
        if _looks_like_state_dict(payload):
            hint = (
                "; it looks like a bare state dict (an official CCNet or mmsegmentation "
                "checkpoint?): import it with model.convert.convert_checkpoint / `ccnet convert`"
            )
        raise ValueError(f"{file}: not a {CHECKPOINT_FORMAT} file{hint}")
    version = payload.get("version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{file}: invalid checkpoint version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise ValueError(
            f"{file}: checkpoint version {version} is newer than this code reads "
            f"(up to {CHECKPOINT_VERSION}); upgrade the package"
        )
    state, meta = payload.get("state_dict"), payload.get("meta")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{file}: 'state_dict' must map names to tensors")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{file}: 'meta' must be a dict with a 'config' dict")
    return payload


def load_checkpoint(path: PathLike) -> tuple[CCNet, dict[str, Any]]:
    """Rebuild the model recorded in ``path`` and load its weights (on CPU, in eval mode).

    Returns:
        ``(model, meta)``, meta as written by ``save_checkpoint``.

    Raises:
        FileNotFoundError, ValueError: see ``read_checkpoint``; also when the weights do not
            fit the recorded architecture (the message lists the offending keys).
    """
    payload = read_checkpoint(path)
    meta = payload["meta"]
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: invalid model config: {exc}") from exc
    model = build_model(config)
    problems = _state_mismatch(model.state_dict(), payload["state_dict"])
    if problems:
        raise ValueError(f"{path}: weights do not match the recorded architecture; {problems}")
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval(), meta


def _state_mismatch(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> str:
    """One line naming missing and unexpected keys and shape mismatches ('' when none)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    parts = [
        f"{label}: {_listing(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    return "; ".join(parts)


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … and {len(keys) - limit} more" if len(keys) > limit else "")
