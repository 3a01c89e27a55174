"""The corrupted-clip set the temporal benches score on: their shared flags, and the split
with its frame groups (``temporal_gain`` and ``temporal_attention`` take the same ones)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from ccnet.training.datasets import SplitIndex, load_split
from ccnet.training.synth import corruption_groups

__all__ = ["add_clip_set_arguments", "open_clip_set"]


def add_clip_set_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--split``, ``--clip-length``, ``--threads`` and ``--json``."""
    parser.add_argument("--data", required=True, help="a `ccnet synth --kind clips` data set")
    parser.add_argument("--split", default="val")
    parser.add_argument("--clip-length", type=int, help="CCNet3D window (default: the model's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")


def open_clip_set(args: argparse.Namespace) -> tuple[SplitIndex, Callable[[int], list[str]]]:
    """Set the compute threads, then load the split and its frames' corruption groups."""
    torch.set_num_threads(args.threads)
    index = load_split(args.data, args.split, "clips", progress=False)
    return index, corruption_groups(index)
