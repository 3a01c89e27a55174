"""The training run's settings: one frozen dataclass, a config file, command-line overrides.

Precedence: dataclass defaults < config file (YAML or JSON, same keys) < command-line flags.
The flags of ``ccnet train`` are generated from the fields below (``--batch-size`` for
``batch_size``, ``--amp/--no-amp`` for booleans), so the file keys, the flags and the code can
never drift apart; ``help`` in each field's metadata is the flag's help text.

Defaults follow the official CCNet recipe where one exists (SGD, momentum 0.9, weight decay
5e-4, poly power 0.9, auxiliary weight 0.4, OHEM threshold 0.7, category-consistent loss
margins 0.5 / 1.5 and weights 1 / 1 / 0.001). Crop size, batch size, iterations and learning
rate default to the model's zoo recipe (``model.zoo.get_recipe``): 128 / 8 / 3000 / 0.02 for
``ccnet-tiny``, the paper's 769 / 8 / 60 000 / 0.01 for the ResNet models; the resolved numbers
are what ``config.json`` records.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from torch.utils.data import Dataset

from ccnet.model.zoo import Normalization, get_recipe
from ccnet.training.datasets import ClipDataset, FrameDataset, SplitIndex
from ccnet.training.datasets.index import Layout
from ccnet.training.frame_drop import FrameDrop
from ccnet.training.losses import CategoryConsistentLoss, SegmentationLoss
from ccnet.training.sampler import SeededBatchSampler
from ccnet.training.transforms import TrainTransform

__all__ = [
    "TrainConfig",
    "add_config_arguments",
    "command_line",
    "load_config_file",
    "resolve_config",
]


_FROM_RECIPE = ("iterations", "batch_size", "lr", "crop_size")
"""Fields whose default is the model's ``model.recipes.TrainingRecipe`` (``model.zoo``)."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (saved as ``RUN_DIR/config.json``)."""

    # what to train, on what, where to write
    model: str = field(default="ccnet-tiny", metadata=_help("zoo model name (see `ccnet models`)"))
    data: str = field(default="", metadata=_help("data set folder"))
    layout: Layout | None = field(
        default=None, metadata=_help("data layout (default: recognised from the folders)")
    )
    out: str = field(
        default="", metadata=_help("run folder: checkpoints, TensorBoard logs, config and summary")
    )
    init: str | None = field(
        default=None,
        metadata=_help(
            "checkpoint whose matching weights initialise the model (e.g. a 2D model for 3D)"
        ),
    )
    train_split: str = field(default="train", metadata=_help("split to train on"))
    val_split: str | None = field(
        default="val", metadata=_help("split to validate on (none: skip validation)")
    )
    # schedule
    iterations: int | None = field(
        default=None, metadata=_help("optimiser steps (default: the model's recipe)")
    )
    batch_size: int | None = field(
        default=None,
        metadata=_help(
            "samples per process per step, clips counting as one (default: the model's recipe)"
        ),
    )
    accumulate: int = field(
        default=1, metadata=_help("gradient accumulation: micro-batches per optimiser step")
    )
    lr: float | None = field(
        default=None, metadata=_help("base learning rate (default: the model's recipe)")
    )
    head_lr_mult: float = field(
        default=1.0,
        metadata=_help(
            "learning-rate multiplier for the RCCA head (attention included), e.g. 10 when "
            "fine-tuning a trained backbone: a 2D model into CCNet3D, or onto new classes"
        ),
    )
    attention_lr_mult: float = field(
        default=1.0,
        metadata=_help(
            "further multiplier for the criss-cross attention block: its gamma starts at 0 "
            "and learns slowly, so short runs may need it raised"
        ),
    )
    momentum: float = field(default=0.9, metadata=_help("SGD momentum"))
    weight_decay: float = field(default=5e-4, metadata=_help("SGD weight decay"))
    power: float = field(
        default=0.9, metadata=_help("poly schedule power: lr = base · (1 − it/iterations)^power")
    )
    warmup_iterations: int = field(default=0, metadata=_help("linear warm-up steps (0: none)"))
    warmup_factor: float = field(
        default=0.1, metadata=_help("warm-up starts at this fraction of the poly lr")
    )
    # augmentation
    crop_size: int | None = field(
        default=None, metadata=_help("square training crop, pixels (default: the model's recipe)")
    )
    scale_min: float = field(default=0.5, metadata=_help("random scale lower bound"))
    scale_max: float = field(default=2.0, metadata=_help("random scale upper bound"))
    flip: bool = field(default=True, metadata=_help("random horizontal flip"))
    jitter: float = field(default=0.0, metadata=_help("photometric jitter strength (0: off)"))
    # losses
    loss: Literal["ce", "ohem"] = field(
        default="ce", metadata=_help("main criterion: cross-entropy or OHEM")
    )
    ohem_threshold: float = field(
        default=0.7, metadata=_help("OHEM: keep pixels whose true-class probability is below")
    )
    ohem_min_kept: int = field(
        default=100_000, metadata=_help("OHEM: keep at least this many pixels per batch")
    )
    aux_weight: float = field(default=0.4, metadata=_help("weight of the auxiliary head's loss"))
    aux_ohem: bool = field(
        default=False,
        metadata=_help("with --loss ohem, mine the auxiliary output too (official: plain CE)"),
    )
    cc_loss: bool = field(
        default=False, metadata=_help("add the category-consistent loss (TPAMI) on the RCCA output")
    )
    cc_dim: int = field(default=16, metadata=_help("category-consistent loss: projection size"))
    cc_delta_v: float = field(
        default=0.5, metadata=_help("category-consistent loss: variance margin")
    )
    cc_delta_d: float = field(
        default=1.5, metadata=_help("category-consistent loss: distance margin")
    )
    cc_alpha: float = field(
        default=1.0, metadata=_help("category-consistent loss: weight of l_var")
    )
    cc_beta: float = field(default=1.0, metadata=_help("category-consistent loss: weight of l_dis"))
    cc_gamma: float = field(
        default=0.001, metadata=_help("category-consistent loss: weight of l_reg")
    )
    # clips (CCNet3D)
    clip_length: int | None = field(
        default=None, metadata=_help("frames per training clip (default: the model's)")
    )
    clip_stride: int = field(
        default=1, metadata=_help("frames between the starts of training clips")
    )
    attention_gamma_init: float | None = field(
        default=None,
        metadata=_help(
            "start the criss-cross attention's gamma here (after --init): at 0, as a 2D model "
            "leaves it, its queries and keys get no gradient and a 3D model's time line can "
            "stay idle for thousands of steps (default: keep the initial value)"
        ),
    )
    frame_drop: float = field(
        default=0.0,
        metadata=_help(
            "chance that a frame of a training clip is replaced by one with no information "
            "(flat or scrambled), its mask kept, so CCNet3D must read its neighbours (0: off)"
        ),
    )
    # execution
    amp: bool = field(
        default=True, metadata=_help("mixed precision: bfloat16 on CPU, float16 on CUDA")
    )
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda or cuda:N"))
    backend: str | None = field(
        default=None, metadata=_help("process-group backend (default: nccl on CUDA, else gloo)")
    )
    sync_bn: bool = field(
        default=True, metadata=_help("SyncBatchNorm when training on several GPUs")
    )
    workers: int = field(default=0, metadata=_help("DataLoader worker processes"))
    threads: int | None = field(
        default=None, metadata=_help("torch CPU threads (default: torch's choice)")
    )
    seed: int = field(default=0, metadata=_help("seed of weights, data order and augmentation"))
    # bookkeeping
    val_every: int = field(
        default=2000, metadata=_help("validate every N steps (and at the end); 0: only at the end")
    )
    checkpoint_every: int = field(
        default=1000, metadata=_help("write a resumable checkpoint every N steps")
    )
    keep_checkpoints: int = field(default=2, metadata=_help("resumable checkpoints to keep"))
    log_every: int = field(default=10, metadata=_help("TensorBoard scalars every N steps"))
    tensorboard: bool = field(
        default=True, metadata=_help("write TensorBoard scalars under RUN_DIR/tb")
    )
    progress: bool = field(default=True, metadata=_help("show progress bars"))

    def __post_init__(self) -> None:
        recipe = get_recipe(self.model)  # unset schedule settings come from the model's entry
        for name in _FROM_RECIPE:
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(recipe, name))
        positive = ("iterations", "batch_size", "accumulate", "crop_size", "clip_stride", "cc_dim")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        non_negative = (
            "warmup_iterations", "workers", "val_every", "checkpoint_every", "log_every",
            "ohem_min_kept", "aux_weight", "weight_decay", "lr", "momentum", "seed",
            "head_lr_mult", "attention_lr_mult",
        )  # fmt: skip
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(
                f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}"
            )
        if not 0 < self.warmup_factor <= 1:
            raise ValueError(f"warmup_factor must be in (0, 1], got {self.warmup_factor}")
        if not 0 <= self.frame_drop < 1:
            raise ValueError(f"frame_drop must be in [0, 1), got {self.frame_drop}")
        if self.clip_length is not None and self.clip_length < 1:
            raise ValueError(f"clip_length must be >= 1, got {self.clip_length}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Factories: each setting is turned into the object that uses it here and only here, so a
    # new field is declared and wired in this one class.

    def train_transform(self, normalization: Normalization) -> TrainTransform:
        """The augmentation: random scale, crop, flip and jitter."""
        return TrainTransform(
            normalization,
            (self.crop_size, self.crop_size),
            (self.scale_min, self.scale_max),
            self.flip,
            self.jitter,
        )

    def train_dataset(
        self, index: SplitIndex, normalization: Normalization, clip_length: int | None
    ) -> Dataset:
        """Training samples: frames, or windows of ``clip_length`` frames for a video model."""
        transform = self.train_transform(normalization)
        if clip_length is not None:
            if self.frame_drop > 0:
                transform = FrameDrop(transform, self.frame_drop)
            return ClipDataset(index, clip_length, transform, self.clip_stride)
        return FrameDataset(index, transform)

    def batch_sampler(
        self, num_samples: int, rank: int, world_size: int, iteration: int
    ) -> SeededBatchSampler:
        """The data stream from step ``iteration`` on (a pure function of the step)."""
        return SeededBatchSampler(
            num_samples,
            self.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            start_batch=iteration * self.accumulate,
        )

    def segmentation_loss(self) -> SegmentationLoss:
        """The main criterion (cross-entropy or OHEM) plus the weighted auxiliary loss."""
        return SegmentationLoss(
            self.loss,
            aux_weight=self.aux_weight,
            ohem_threshold=self.ohem_threshold,
            ohem_min_kept=self.ohem_min_kept,
            aux_ohem=self.aux_ohem,
        )

    def category_consistent_loss(
        self, in_channels: int, num_classes: int
    ) -> CategoryConsistentLoss | None:
        """The TPAMI category-consistent loss on ``in_channels`` features, if enabled."""
        if not self.cc_loss:
            return None
        return CategoryConsistentLoss(
            in_channels,
            num_classes,
            embed_dim=self.cc_dim,
            delta_v=self.cc_delta_v,
            delta_d=self.cc_delta_d,
            alpha=self.cc_alpha,
            beta=self.cc_beta,
            gamma=self.cc_gamma,
        )


_HINTS = get_type_hints(TrainConfig)
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _coerce(name: str, value: Any, where: str) -> Any:
    """``value`` as the type of field ``name``; ValueError names ``where`` and the key."""
    hint, optional = _unwrap_optional(_HINTS[name])
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"{where}: {name} may not be empty")
    if get_origin(hint) is Literal:
        if value not in get_args(hint):
            choices = ", ".join(map(str, get_args(hint)))
            raise ValueError(f"{where}: {name} must be one of {choices}, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: {name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {name} must be a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{where}: {name} must be a string, got {value!r}")
    raise TypeError(f"unsupported config field type for {name}: {hint}")  # a bug, not input


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (``.yaml``/``.yml``) or JSON file, keys checked and values typed.

    Keys may use dashes or underscores (``batch-size`` = ``batch_size``).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise OSError(e.errno, f"{file}: cannot read config file ({e.strerror})") from e
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"{file}: YAML configs need PyYAML (pip install -e '.[train]')"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{file}: invalid YAML ({e})") from e
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{file}: invalid JSON ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{file}: a config file must hold a mapping of settings")
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            raise ValueError(f"{file}: unknown setting {key!r}; see `ccnet train --help`")
        values[name] = _coerce(name, value, str(file))
    return values


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field; unset flags stay absent from the namespace."""
    for name, spec in _FIELDS.items():
        hint, optional = _unwrap_optional(_HINTS[name])
        flag = "--" + name.replace("_", "-")
        default_note = "" if spec.default in ("", None) else f" (default: {spec.default})"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        kwargs["help"] = spec.metadata["help"] + default_note
        # -o is "where the results go" in every ccnet command (the run folder here)
        flags = ("-o", flag) if name == "out" else (flag,)
        if hint is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        elif get_origin(hint) is Literal:
            parser.add_argument(*flags, choices=get_args(hint), **kwargs)
        elif optional:
            parser.add_argument(*flags, metavar=name.upper(), **kwargs)  # coerced later
        else:
            parser.add_argument(*flags, type=hint, metavar=name.upper(), **kwargs)


def resolve_config(
    cli_values: dict[str, Any],
    config_file: str | Path | None = None,
    *,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults, then ``base`` (a resumed run's saved config), then ``config_file``, then
    ``cli_values`` (only the flags actually given).

    Raises:
        ValueError: a value has the wrong type or range, or ``data`` / ``out`` is missing.
    """
    values: dict[str, Any] = {}
    for name, value in (base or {}).items():
        if name not in _FIELDS:
            raise ValueError(f"saved run config: unknown setting {name!r}")
        values[name] = _coerce(name, value, "saved run config")
    if config_file is not None:
        values.update(load_config_file(config_file))
    for name, value in cli_values.items():
        if name in _FIELDS:
            values[name] = _coerce(name, value, "command line")
    config = TrainConfig(**values)
    missing = [name for name in ("data", "out") if not getattr(config, name)]
    if missing:
        raise ValueError(
            "missing " + " and ".join(f"--{m}" for m in missing) + " (flag or config file)"
        )
    return config


def command_line(config: TrainConfig) -> str:
    """The ``ccnet train`` command that reproduces ``config`` (every non-default setting).

    Recorded in checkpoints as provenance: unlike the literal argv it needs no config file and
    shows the settings that file supplied.
    """
    defaults = TrainConfig()
    words = ["ccnet", "train"]
    for name in _FIELDS:
        value = getattr(config, name)
        # the recipe's values are always written: the command must not depend on the zoo
        if value == getattr(defaults, name) and name not in ("model", "data", "out", *_FROM_RECIPE):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, "none" if value is None else str(value)]
    return shlex.join(words)
