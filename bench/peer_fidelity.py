"""Peer fidelity: do converted checkpoints compute what the peers' own code computes?

Random peer checkpoints (He-scaled conv weights, norm weights of both signs) are converted with
``model.convert`` and compared with the independent restatement of each peer network that the
tests use (``tests/model/peers.py``: InPlaceABN's ``abs(w) + eps`` scale, LeakyReLU placement,
the peer's ``align_corners``, its recurrence). Every row is measured in this run, side by side:

* ``conversion = legacy`` reproduces the converter before the fidelity fixes: norm weights
  copied verbatim, every resize with ``align_corners=False``, always R=2;
* ``conversion = current`` is ``convert_checkpoint`` as it is, checkpoint conventions included;
* mixed rows toggle one convention at a time, to show what each one is worth.

Figures: max |ours − peer| / max |peer| over all logits, and the fraction of pixels whose argmax
(class) agrees. "1/8" compares the head's logits before upsampling, "input" the logits at input
size after each side's own upsampling.

Usage:
    python -m bench.peer_fidelity                 # R101 (and R50 for mmseg), 97×129 input
    python -m bench.peer_fidelity --quick         # slim R50s, for a smoke run
"""

from __future__ import annotations

import argparse
import copy
import platform
import subprocess
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from bench._measure import format_table
from ccnet.model import convert_checkpoint
from ccnet.model.ccnet import CCNet

# The restatement of the peers is the tests' own (one copy of it); run from the project root.
from tests.model.peers import (
    fabricate,
    fidelity,
    is_norm_weight,
    mmseg_keys,
    official_keys,
    official_target,
    peer_forward,
    peer_logits,
)

NUM_CLASSES = 19


@dataclass(frozen=True)
class Row:
    case: str
    conversion: str
    compared_at: str
    error: float
    agreement: float
    exact: float | None = None  # the same comparison in float64 on both sides

    def cells(self) -> list[str]:
        exact = "–" if self.exact is None else f"{self.exact:.1g}"
        return [
            self.case,
            self.conversion,
            self.compared_at,
            f"{self.error:.2g}",
            f"{100 * self.agreement:.2f} %",
            exact,
        ]


def _float64_error(
    model: CCNet, source: dict[str, Tensor], flavour: str, depth: int, x: Tensor, recurrence: int
) -> float:
    """Input-size error with both sides in float64: what the conversion computes, free of the
    float32 rounding that a random (ill-conditioned) deep network amplifies.

    The peer's norm weights stay float32, so its ``abs(w) + eps`` is formed in float32 as the
    official code forms it (our checkpoint stores that float32 value); the rest is float64.
    """
    model64 = copy.deepcopy(model).double()
    source64 = {
        k: v if is_norm_weight(k, v) or not v.is_floating_point() else v.double()
        for k, v in source.items()
    }
    x64 = x.double()
    peer = peer_logits(
        source64, flavour, depth, x64, recurrence=recurrence, align_corners=model.align_corners
    )
    return fidelity(model64(x64), peer)[0]


def _coarse(model: CCNet, x: Tensor) -> Tensor:
    """Our head's logits at 1/8, before the final upsampling."""
    return model.head(model.backbone(x)["layer4"])


def _legacy_official(model: CCNet, source: dict[str, Tensor]) -> CCNet:
    """The converted model as the old converter left it: verbatim norm weights, False grid."""
    verbatim = {official_target(k): v for k, v in source.items() if is_norm_weight(k, v)}
    model.load_state_dict({**model.state_dict(), **verbatim})
    model.align_corners = False
    return model


def _official_rows(depth: int, width: int, x: Tensor, head: int, aux: int) -> list[Row]:
    keys = official_keys(depth, NUM_CLASSES, width=width, head=head, aux=aux)
    name = f"official R{depth}"
    rows: list[Row] = []
    with torch.no_grad():
        for negative, label in ((0.0, "norm weights all positive"), (0.2, "20 % negative")):
            source = fabricate(keys, seed=11, negative=negative, conv_gain=2.0)
            reference = peer_forward(source, "official", depth, x, recurrence=2)
            current, _ = convert_checkpoint(source, "official")
            rows.append(
                Row(
                    f"{name} R=2, {label}",
                    "current",
                    "1/8",
                    *fidelity(_coarse(current, x), reference),
                )
            )
            legacy = _legacy_official(convert_checkpoint(source, "official")[0], source)
            rows.append(
                Row(
                    f"{name} R=2, {label}",
                    "legacy",
                    "1/8",
                    *fidelity(_coarse(legacy, x), reference),
                )
            )
            if negative == 0.0:
                continue
            size = x.shape[-2:]
            official = torch.nn.functional.interpolate(
                reference, size=size, mode="bilinear", align_corners=True
            )
            exact = _float64_error(current, source, "official", depth, x, 2)
            rows.append(
                Row(
                    f"{name} R=2, {label}",
                    "current",
                    "input",
                    *fidelity(current(x), official),
                    exact,
                )
            )
            rows.append(
                Row(f"{name} R=2, {label}", "legacy", "input", *fidelity(legacy(x), official))
            )
            legacy.align_corners = True  # verbatim weights alone, on the official grid
            rows.append(
                Row(
                    f"{name} R=2, {label}",
                    "legacy weights, official grid",
                    "input",
                    *fidelity(legacy(x), official),
                )
            )
            current.align_corners = False  # folded weights, the project's old grid
            rows.append(
                Row(
                    f"{name} R=2, {label}",
                    "folded weights, align_corners=False",
                    "input",
                    *fidelity(current(x), official),
                )
            )
            # the R=1 release: converted with --recurrence 1, and as the old converter did (R=2)
            official_r1 = peer_logits(
                source, "official", depth, x, recurrence=1, align_corners=True
            )
            r1, _ = convert_checkpoint(source, "official", recurrence=1)
            exact = _float64_error(r1, source, "official", depth, x, 1)
            rows.append(
                Row(
                    f"{name} R=1, {label}", "current", "input", *fidelity(r1(x), official_r1), exact
                )
            )
            current.align_corners = True
            rows.append(
                Row(
                    f"{name} R=1, {label}",
                    "converted as R=2",
                    "input",
                    *fidelity(current(x), official_r1),
                )
            )
    return rows


def _mmseg_rows(depth: int, width: int, x: Tensor, channels: int, aux: int) -> list[Row]:
    source = fabricate(
        mmseg_keys(depth, NUM_CLASSES, width=width, channels=channels, aux=aux),
        seed=12,
        conv_gain=2.0,
    )
    rows: list[Row] = []
    with torch.no_grad():
        coarse = peer_forward(source, "mmseg", depth, x)
        for corners in (True, False):
            config = f"model = dict(decode_head=dict(type='CCHead', align_corners={corners}))\n"
            payload = {"meta": {"config": config}, "state_dict": source}
            peer = torch.nn.functional.interpolate(
                coarse, size=x.shape[-2:], mode="bilinear", align_corners=corners
            )
            case = f"mmseg R{depth}, config align_corners={corners}"
            model, _ = convert_checkpoint(payload, "mmseg")
            exact = _float64_error(model, source, "mmseg", depth, x, 2)
            rows.append(Row(case, "current", "input", *fidelity(model(x), peer), exact))
            model.align_corners = False
            rows.append(Row(case, "legacy", "input", *fidelity(model(x), peer)))
    return rows


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="slim R50s (width 8), for a smoke run")
    parser.add_argument("--height", type=int, default=97)
    parser.add_argument("--width", type=int, default=129)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.height, args.width)
    began = time.perf_counter()
    if args.quick:
        rows = _official_rows(50, 8, x, head=24, aux=16) + _mmseg_rows(50, 8, x, 24, 16)
    else:
        rows = _official_rows(101, 64, x, head=512, aux=512)
        rows += _mmseg_rows(50, 64, x, 512, 256) + _mmseg_rows(101, 64, x, 512, 256)
    elapsed = time.perf_counter() - began
    headers = [
        "case",
        "conversion",
        "compared at",
        "max rel. logit error",
        "argmax agreement",
        "same, float64",
    ]
    print(
        f"peer fidelity, {args.height}×{args.width} input, random He-scaled weights, fp32, "
        f"CPU: {_cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{elapsed:.0f} s"
    )
    print(format_table(headers, [r.cells() for r in rows]))
    return rows


if __name__ == "__main__":
    main()
