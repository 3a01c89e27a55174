"""Import the peers' CCNet checkpoints: speedinghzl/CCNet ("official") and mmsegmentation.

The peers differ in more than key names (DESIGN §3), so conversion first reads the architecture
off the tensors (block type and depth from the layer counts, widths, classes, head and auxiliary
channels), builds the *matching* network (flavour-specific stem, dilation rule, head activation,
auxiliary conv bias), then maps every tensor by a fixed renaming (``peer_key_map``). It is
strict: every source tensor must be used and every parameter and buffer filled, with equal
shapes, or a ValueError names the keys.

"Converted" means the same logits at input size as the peer's own code under its own
conventions, which takes three things the key names do not say:

InPlaceABN's scale (official only)
    Every norm of the official network (backbone, head and auxiliary head) is an InPlaceABN,
    which scales by ``abs(weight) + eps`` rather than ``weight``, in eval as in training. The
    converter folds that into our BatchNorm's weight, so a negative weight (common after
    training) keeps its official meaning. mmseg's BatchNorms are plain and copied as they are.
``align_corners`` of the final upsampling
    The official evaluation and criterion upsample with ``align_corners=True``; mmseg takes it
    from its config (``True`` in its 769×769 Cityscapes configs). An mmseg checkpoint's embedded
    config (``meta["config"]`` in 0.x, ``meta["cfg"]`` in 1.x, as text or dict) is read for the
    decode head's value; without one the caller says (default False). It goes into the config.
Recurrence
    Dilation, output stride and recurrence leave no trace in the weights. Both peers use output
    stride 8; the official repository released R=1 and R=2 models, so R is an argument
    (default 2, or what an mmseg checkpoint's config says).
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ccnet.model.backbones.resnet import DEPTHS
from ccnet.model.ccnet import CCNet
from ccnet.model.checkpoint import (
    complete_meta,
    default_class_names,
    default_palette,
    load_plain,
    save_checkpoint,
)
from ccnet.model.model_config import MMSEG_NORMALIZATION, OFFICIAL_NORMALIZATION, ModelConfig
from ccnet.model.zoo import build_model

__all__ = [
    "INPLACE_ABN_EPS",
    "PeerFlavour",
    "convert_checkpoint",
    "fold_inplace_abn",
    "infer_config",
    "mmseg_config_value",
    "peer_key_map",
]

# InPlaceABN's default eps (mapillary/inplace_abn and the official repository's vendored copy);
# the official network never overrides it, and a state dict does not record it.
INPLACE_ABN_EPS = 1e-5
# Conventions of the peers' own code where a checkpoint does not say otherwise.
_PEER_ALIGN_CORNERS = {"official": True, "mmseg": False}
_DEFAULT_RECURRENCE = 2

PeerFlavour = Literal["official", "mmseg"]
PathLike = str | os.PathLike[str]

# (our prefix, peer prefix), first match wins; applied to every key of our state dict.
_OFFICIAL_RULES: tuple[tuple[str, str], ...] = (
    ("backbone.stem.", ""),  # the official stem lives at the top level: conv1, bn1, … bn3
    ("backbone.", ""),  # layer1..layer4 keep their torchvision names
    ("head.conva.conv.", "head.conva.0."),
    ("head.conva.norm.", "head.conva.1."),  # InPlaceABNSync: BN weight/bias/running stats
    ("head.cca.", "head.cca."),
    ("head.convb.conv.", "head.convb.0."),
    ("head.convb.norm.", "head.convb.1."),
    ("head.bottleneck.conv.", "head.bottleneck.0."),
    ("head.bottleneck.norm.", "head.bottleneck.1."),
    ("head.classifier.", "head.bottleneck.3."),  # index 2 is the Dropout2d
    ("aux_head.conv.conv.", "dsn.0."),
    ("aux_head.conv.norm.", "dsn.1."),
    ("aux_head.classifier.", "dsn.3."),  # index 2 is the Dropout2d
)
_MMSEG_RULES: tuple[tuple[str, str], ...] = (
    # ResNetV1c stem: Sequential(conv, bn, relu, conv, bn, relu, conv, bn, relu)
    ("backbone.stem.conv1.", "backbone.stem.0."),
    ("backbone.stem.bn1.", "backbone.stem.1."),
    ("backbone.stem.conv2.", "backbone.stem.3."),
    ("backbone.stem.bn2.", "backbone.stem.4."),
    ("backbone.stem.conv3.", "backbone.stem.6."),
    ("backbone.stem.bn3.", "backbone.stem.7."),
    ("backbone.", "backbone."),
    ("head.conva.conv.", "decode_head.convs.0.conv."),
    ("head.conva.norm.", "decode_head.convs.0.bn."),
    ("head.cca.gamma", "decode_head.cca.gamma.scale"),  # mmcv's Scale module: a 0-dim tensor
    ("head.cca.", "decode_head.cca."),
    ("head.convb.conv.", "decode_head.convs.1.conv."),
    ("head.convb.norm.", "decode_head.convs.1.bn."),
    ("head.bottleneck.conv.", "decode_head.conv_cat.conv."),
    ("head.bottleneck.norm.", "decode_head.conv_cat.bn."),
    ("head.classifier.", "decode_head.conv_seg."),
    ("aux_head.conv.conv.", "auxiliary_head.convs.0.conv."),
    ("aux_head.conv.norm.", "auxiliary_head.convs.0.bn."),
    ("aux_head.classifier.", "auxiliary_head.conv_seg."),
)
_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "official": _OFFICIAL_RULES,
    "mmseg": _MMSEG_RULES,
}

# Where each flavour keeps the tensors the architecture is read from (and its backbone prefix).
_PROBES: dict[str, dict[str, str]] = {
    "official": {
        "backbone": "",
        "conva": "head.conva.0.weight",
        "bottleneck": "head.bottleneck.0.weight",
        "classifier": "head.bottleneck.3.weight",
        "aux": "dsn.0.weight",
    },
    "mmseg": {
        "backbone": "backbone.",
        "conva": "decode_head.convs.0.conv.weight",
        "bottleneck": "decode_head.conv_cat.conv.weight",
        "classifier": "decode_head.conv_seg.weight",
        "aux": "auxiliary_head.convs.0.conv.weight",
    },
}

_NORMALIZATION = {"official": OFFICIAL_NORMALIZATION, "mmseg": MMSEG_NORMALIZATION}


def _check_flavour(flavour: str) -> None:
    if flavour not in _RULES:
        raise ValueError(f"unknown checkpoint flavour {flavour!r}; choose 'official' or 'mmseg'")


def _peer_key(key: str, flavour: PeerFlavour) -> str:
    for ours, theirs in _RULES[flavour]:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    raise ValueError(f"no {flavour} name for parameter {key!r}")


def peer_key_map(config: ModelConfig) -> dict[str, str]:
    """Our state-dict key -> the peer's key, for every parameter and buffer of ``config``.

    The peer is ``config.flavour``. BN ``num_batches_tracked`` buffers are included although
    the official checkpoints (InPlaceABN) have none; the converter fills those with 0.
    """
    _check_flavour(config.flavour)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        keys = list(build_model(config).state_dict())
    return {key: _peer_key(key, config.flavour) for key in keys}


def _unwrap(obj: object, origin: str) -> dict[str, Tensor]:
    """The tensor dict inside a checkpoint: unwraps ``{"state_dict": …}`` and ``module.``."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{origin}: expected a state dict (name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{origin}: entries that are not named tensors: {_names(bad)}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _names(keys: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … and {len(keys) - limit} more" if len(keys) > limit else "")


def _require(state: Mapping[str, Tensor], key: str, flavour: str) -> Tensor:
    if key not in state:
        raise ValueError(f"not an {flavour} CCNet state dict: key {key!r} is missing")
    return state[key]


def infer_config(state: Mapping[str, Tensor], flavour: PeerFlavour) -> ModelConfig:
    """Read the architecture of a peer state dict (keys already unwrapped) off its tensors.

    Raises:
        ValueError: a key needed to infer the architecture is missing, or the layer counts are
            not those of ResNet-18/34/50/101.
    """
    _check_flavour(flavour)
    probes = _PROBES[flavour]
    prefix = probes["backbone"]
    counts = []
    for stage in range(1, 5):
        head = f"{prefix}layer{stage}."
        blocks = {int(k[len(head) :].split(".")[0]) for k in state if k.startswith(head)}
        if not blocks or blocks != set(range(len(blocks))):
            raise ValueError(
                f"not an {flavour} CCNet state dict: blocks of layer{stage} are {sorted(blocks)}"
            )
        counts.append(len(blocks))
    kind = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state else "basic"
    depths = [d for d, (k, c) in DEPTHS.items() if k == kind and c == tuple(counts)]
    if not depths:
        raise ValueError(f"unsupported ResNet layout: {kind} blocks {tuple(counts)} per stage")
    depth = depths[0]
    width = _require(state, f"{prefix}layer1.0.conv1.weight", flavour).shape[0]
    inter = _require(state, probes["conva"], flavour).shape[0]
    top_channels = width * 8 * (4 if kind == "bottleneck" else 1)
    aux = state.get(probes["aux"])
    return ModelConfig(
        name=f"ccnet-r{depth}-{flavour}",
        depth=depth,
        width=width,
        flavour=flavour,
        head_channels=_require(state, probes["bottleneck"], flavour).shape[0],
        inter_channels=None if inter == top_channels // 4 else inter,
        aux_channels=None if aux is None else aux.shape[0],
        num_classes=_require(state, probes["classifier"], flavour).shape[0],
        normalization=_NORMALIZATION[flavour],
    )


def _map_state(
    state: Mapping[str, Tensor],
    key_map: Mapping[str, str],
    target: Mapping[str, Tensor],
    origin: str,
) -> dict[str, Tensor]:
    """Our state dict from the peer's, strictly: all used, all filled, shapes equal."""
    mapped: dict[str, Tensor] = {}
    missing, mismatched, used = [], [], set()
    for ours, theirs in key_map.items():
        if theirs not in state:
            if ours.endswith("num_batches_tracked"):
                # InPlaceABN (official) keeps no batch counter. It only matters for BN with
                # momentum=None (cumulative average), which we never use; 0 = a fresh BN.
                mapped[ours] = torch.zeros((), dtype=torch.long)
            else:
                missing.append(theirs)
            continue
        tensor = state[theirs]
        used.add(theirs)
        if ours.endswith("cca.gamma") and tensor.dim() == 0:
            tensor = tensor.reshape(1)  # mmcv's Scale stores a 0-dim scalar, ours is (1,)
        if tensor.shape != target[ours].shape:
            mismatched.append(
                f"{theirs} {tuple(tensor.shape)} vs {ours} {tuple(target[ours].shape)}"
            )
        mapped[ours] = tensor
    unexpected = sorted(set(state) - used)
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_names(mismatched)}")
    if problems:
        raise ValueError(f"{origin}: cannot convert strictly; " + "; ".join(problems))
    return mapped


def fold_inplace_abn(
    model: nn.Module, state: Mapping[str, Tensor], eps: float = INPLACE_ABN_EPS
) -> dict[str, Tensor]:
    """``state`` with every norm weight replaced by the scale InPlaceABN applies with it.

    InPlaceABN normalises like BatchNorm but multiplies by ``abs(weight) + eps`` (it keeps the
    scale positive so the activation can be inverted in place), in eval as in training. Our
    BatchNorm multiplies by its weight, so storing ``abs(weight) + eps`` there computes exactly
    what the official network computes. Applied to every ``BatchNorm2d`` of ``model``: in the
    official network every norm is an InPlaceABN (with an identity activation in the backbone).

    Args:
        model: our network (names which state keys are norm weights).
        state: our state dict, peer values already mapped onto our names.
        eps: InPlaceABN's eps (its default unless the peer network was built otherwise).
    """
    if not eps >= 0:
        raise ValueError(f"InPlaceABN eps must be >= 0, got {eps}")
    folded = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and module.affine:
            key = f"{name}.weight"
            folded[key] = state[key].abs() + eps
    return folded


def _embedded_config(payload: object) -> object | None:
    """The training config an mmseg checkpoint embeds: text (pretty_text) or dict, else None."""
    meta = payload.get("meta") if isinstance(payload, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    for key in ("config", "cfg"):  # mmseg 0.x, mmengine-based 1.x
        value = meta.get(key)
        if isinstance(value, str | Mapping):
            return value
    return None


def _value_in_ast(node: ast.AST, section: str, field: str) -> object | None:
    """``section=dict(field=VALUE)`` or ``{"section": {"field": VALUE}}`` in a parsed config."""
    for item in ast.walk(node):
        if isinstance(item, ast.keyword) and item.arg == section:
            body = item.value
        elif isinstance(item, ast.Dict):
            body = next(
                (
                    v
                    for k, v in zip(item.keys, item.values, strict=True)
                    if isinstance(k, ast.Constant) and k.value == section
                ),
                None,
            )
            if body is None:
                continue
        else:
            continue
        pairs: list[tuple[object, ast.AST]] = []
        if isinstance(body, ast.Call):
            pairs = [(kw.arg, kw.value) for kw in body.keywords]
        elif isinstance(body, ast.Dict):
            pairs = [
                (k.value, v)
                for k, v in zip(body.keys, body.values, strict=True)
                if isinstance(k, ast.Constant)
            ]
        for name, value in pairs:
            if name == field and isinstance(value, ast.Constant):
                return value.value
    return None


def _value_in_text(text: str, section: str, field: str) -> object | None:
    """Fallback for config text that does not parse: the field inside the section's brackets."""
    start = re.search(rf"""["']?{section}["']?\s*[=:]\s*(?:dict\(|\{{)""", text)
    if start is None:
        return None
    depth, end = 1, start.end()
    while end < len(text) and depth:
        depth += {"(": 1, "{": 1, ")": -1, "}": -1}.get(text[end], 0)
        end += 1
    found = re.search(
        rf"""["']?{field}["']?\s*[=:]\s*(True|False|true|false|\d+)""", text[start.end() : end]
    )
    if found is None:
        return None
    token = found.group(1)
    return token.lower() == "true" if token.lower() in ("true", "false") else int(token)


def mmseg_config_value(config: object, field: str, section: str = "decode_head") -> object | None:
    """A decode-head setting from an mmseg checkpoint's embedded config, or None if absent.

    The config is read as data, never executed: a dict is looked up, text (mmseg's
    ``pretty_text``, Python syntax) is parsed with ``ast``, with a bracket scan for text that
    does not parse.

    Args:
        config: ``meta["config"]`` / ``meta["cfg"]`` of the checkpoint.
        field: e.g. ``"align_corners"`` or ``"recurrence"``.
        section: the config section holding it.
    """
    if isinstance(config, Mapping):
        model_cfg = config.get("model", config)
        head = model_cfg.get(section) if isinstance(model_cfg, Mapping) else None
        return head.get(field) if isinstance(head, Mapping) else None
    if not isinstance(config, str):
        return None
    try:
        tree = ast.parse(config)
    except (SyntaxError, ValueError):
        return _value_in_text(config, section, field)
    return _value_in_ast(tree, section, field)


def _setting(
    name: str,
    requested: object | None,
    recorded: object | None,
    default: object,
    origin: str,
    kind: type,
    recorded_by: str = "the checkpoint's own config",
) -> tuple[object, str]:
    """Pick a conversion setting: what the checkpoint records wins, else the caller's, else the
    peer's default. A request that contradicts the record is an error, not silently dropped.

    Returns:
        ``(value, where it came from)`` for the provenance.
    """
    if recorded is not None:
        if not isinstance(recorded, kind) or isinstance(recorded, bool) != (kind is bool):
            raise ValueError(f"{origin}: the embedded config has {name}={recorded!r}")
        if requested is not None and requested != recorded:
            raise ValueError(
                f"{origin}: {name}={requested!r} was asked for but {recorded_by} says "
                f"{name}={recorded!r}"
            )
        return recorded, "checkpoint config"
    if requested is not None:
        return requested, "requested"
    return default, "peer default"


def _peer_classes(payload: object, num_classes: int) -> tuple[list[str] | None, list | None]:
    """Class names and palette an mmseg checkpoint records in its meta (0.x or 1.x layout)."""
    meta = payload.get("meta") if isinstance(payload, Mapping) else None
    if not isinstance(meta, Mapping):
        return None, None
    source = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else meta
    classes = source.get("classes", source.get("CLASSES"))
    palette = source.get("palette", source.get("PALETTE"))
    if classes is None or len(classes) != num_classes:
        return None, None
    if palette is not None and len(palette) == num_classes:
        palette = [[int(v) for v in colour] for colour in palette]
    else:
        palette = None
    return [str(c) for c in classes], palette


def convert_checkpoint(
    src: PathLike | Mapping[str, Any],
    flavour: PeerFlavour,
    dst: PathLike | None = None,
    *,
    classes: Sequence[str] | None = None,
    recurrence: int | None = None,
    align_corners: bool | None = None,
    abn_eps: float = INPLACE_ABN_EPS,
) -> tuple[CCNet, dict[str, Any]]:
    """Convert a peer checkpoint into our model (and our checkpoint file if ``dst`` is given).

    Args:
        src: the peer's file (loaded with ``weights_only=True``) or its already loaded content.
        flavour: ``"official"`` (speedinghzl/CCNet) or ``"mmseg"`` (mmsegmentation).
        dst: where to write our checkpoint (atomically), or None.
        classes: class names; default the ones an mmseg checkpoint records, else Cityscapes'
            19 names for 19 outputs, else ``class_0`` …
        recurrence: attention passes R the peer model was trained with; default what an mmseg
            checkpoint's config records, else 2 (the official R=1 release needs 1 here).
        align_corners: the final upsampling's grid; default the peer's convention (official:
            True; mmseg: the checkpoint's config, else False). A value that contradicts the
            checkpoint's config or the official code is an error.
        abn_eps: InPlaceABN's eps, folded into the official norms' scale (module docstring).

    Returns:
        ``(model, meta)``: the converted model in eval mode and its complete metadata.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: unreadable file, unknown layout, any key or shape that does not map, or a
            setting that contradicts the checkpoint.
    """
    _check_flavour(flavour)
    if recurrence is not None and (isinstance(recurrence, bool) or recurrence < 1):
        raise ValueError(f"recurrence must be an integer >= 1, got {recurrence!r}")
    if isinstance(src, Mapping):
        payload: object = src
        origin = f"{flavour} state dict"
    else:
        origin = str(src)
        payload = load_plain(src)
    state = _unwrap(payload, origin)
    embedded = _embedded_config(payload) if flavour == "mmseg" else None
    recorded_ac = mmseg_config_value(embedded, "align_corners") if embedded is not None else None
    recorded_r = mmseg_config_value(embedded, "recurrence") if embedded is not None else None
    recorded_by = "the checkpoint's own config"
    if flavour == "official":
        recorded_ac = True  # the official evaluation and criterion hard-code it
        recorded_by = "the official CCNet code"
    corners, corners_from = _setting(
        "align_corners",
        align_corners,
        recorded_ac,
        _PEER_ALIGN_CORNERS[flavour],
        origin,
        bool,
        recorded_by,
    )
    passes, passes_from = _setting(
        "recurrence", recurrence, recorded_r, _DEFAULT_RECURRENCE, origin, int
    )
    if flavour == "official":
        corners_from = "official convention"
    config = dataclasses.replace(
        infer_config(state, flavour), recurrence=passes, align_corners=corners
    )
    model = build_model(config)
    target = model.state_dict()
    key_map = {key: _peer_key(key, flavour) for key in target}  # = peer_key_map(config)
    mapped = _map_state(state, key_map, target, origin)
    if flavour == "official":
        mapped = fold_inplace_abn(model, mapped, abn_eps)
    model.load_state_dict(mapped, strict=True)
    model.eval()

    peer_classes, peer_palette = _peer_classes(payload, config.num_classes)
    names = list(classes) if classes is not None else peer_classes
    names = names or default_class_names(config.num_classes)
    palette = peer_palette if classes is None and peer_palette else default_palette(names)
    meta = {
        "classes": names,
        "palette": palette,
        "provenance": {
            "source": f"{flavour} CCNet checkpoint",
            "source_file": None if isinstance(src, Mapping) else Path(src).name,
            "converted": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "peer_conventions": {
                "align_corners": corners_from,
                "recurrence": passes_from,
                "inplace_abn_scale": (
                    f"abs(weight) + {abn_eps:g} folded" if flavour == "official" else None
                ),
            },
        },
    }
    meta = save_checkpoint(model, meta, dst) if dst is not None else complete_meta(model, meta)
    return model, meta
