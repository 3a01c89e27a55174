"""CPU inference paths side by side: every precision and runtime against fp32 eager.

For each model and size, one process times (interleaved, medians) torch eager fp32
(contiguous), torch fp32 channels-last (the service's fp32), torch bf16 autocast (channels-
last and contiguous), ONNX Runtime fp32 and ONNX Runtime int8 (static QDQ, calibrated as the
service calibrates), and reports each as a ratio to fp32 eager, as GFLOP/s (the model's
convolution and matmul FLOPs from PyTorch's FLOP counter) and as a fraction of this machine's
sgemm and bf16 GEMM peaks measured in the same run, with the argmax agreement against fp32
on a real photograph. ``ccnet-tiny`` is the trained demo model (and gets the service's full
parity gate); ``ccnet-r18``/``ccnet-r50`` carry untrained weights (19 classes), which is
fine for speed and makes their agreement a harsh case (near-tied logits everywhere).

Usage:
    python -m bench.inference                    # the issue's models and sizes
    python -m bench.inference --quick            # ccnet-tiny at 128², a smoke run
    python -m bench.inference --cases ccnet-r18@512 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench._measure import format_table, time_interleaved
from ccnet.inference.demo import BUNDLED_MODELS

CASES = ["ccnet-tiny@256", "ccnet-tiny@512", "ccnet-r18@512", "ccnet-r50@512"]
QUICK_CASES = ["ccnet-tiny@128"]
_DEMO = BUNDLED_MODELS[0]


def gemm_peaks(threads: int, size: int = 2048, rounds: int = 5) -> dict[str, float]:
    """GFLOP/s of a size² matmul in fp32 and bf16 with ``threads`` threads (best of rounds)."""
    torch.set_num_threads(threads)
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        torch.mm(a, b)
        best = min(_seconds(lambda a=a, b=b: torch.mm(a, b)) for _ in range(rounds))
        peaks[name] = 2 * size**3 / best / 1e9
    return peaks


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _checkpoint(name: str, workdir: Path) -> Path:
    """The demo checkpoint for ccnet-tiny; an untrained 19-class one for the others."""
    if name == "ccnet-tiny":
        return _DEMO
    from ccnet.model import build_model, save_checkpoint
    from ccnet.model.checkpoint import complete_meta

    path = workdir / f"{name}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        model = build_model(name, num_classes=19)
        save_checkpoint(model, complete_meta(model), path)
    return path


def _photo(side: int) -> np.ndarray:
    import skimage.data
    from PIL import Image

    image = Image.fromarray(skimage.data.astronaut()).resize((side, side))
    return np.ascontiguousarray(np.moveaxis(np.asarray(image, np.float32), -1, 0)[None])


def _torch_paths(checkpoint: Path) -> tuple[dict[str, Callable], torch.nn.Module, object]:
    from ccnet.model import Normalization, load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    model.eval()
    norm = Normalization(**meta["normalization"])
    last = model.to(memory_format=torch.channels_last)  # same parameters, NHWC copies
    contiguous, _ = load_checkpoint(checkpoint)
    contiguous.eval()

    def run(module: torch.nn.Module, layout: torch.memory_format, bf16: bool) -> Callable:
        @torch.inference_mode()
        def forward(batch: np.ndarray) -> np.ndarray:
            x = norm.normalize(torch.from_numpy(batch), channel_dim=1)
            x = x.contiguous(memory_format=layout)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return module(x).float().numpy()

        return forward

    paths = {
        "torch eager fp32": run(contiguous, torch.contiguous_format, False),
        "torch fp32 channels-last": run(last, torch.channels_last, False),
        "torch bf16 contiguous": run(contiguous, torch.contiguous_format, True),
        "torch bf16 channels-last": run(last, torch.channels_last, True),
    }
    return paths, contiguous, norm


def _ort_paths(checkpoint: Path, workdir: Path, threads: int) -> dict[str, Callable]:
    import onnxruntime

    from ccnet.export.onnx import export_onnx
    from ccnet.inference.backends.quantize import calibration_inputs, quantize_int8

    target = workdir / f"onnx-{checkpoint.stem}"
    onnx_path = target / "model.onnx"
    if not onnx_path.is_file():
        export_onnx(checkpoint, target, progress=None)
    int8_path = workdir / f"int8-{checkpoint.stem}" / "model.onnx"
    if not int8_path.is_file():
        from ccnet.model import load_checkpoint

        generator = load_checkpoint(checkpoint)[1].get("provenance", {}).get("data_generator")
        quantize_int8(onnx_path, int8_path, calibration_inputs("image", generator))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    paths = {}
    for name, path in (("ORT fp32", onnx_path), ("ORT int8 (QDQ)", int8_path)):
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        input_name = session.get_inputs()[0].name
        paths[name] = lambda batch, s=session, i=input_name: s.run(None, {i: batch})[0]
    return paths


def _flops(model: torch.nn.Module, norm: object, batch: np.ndarray) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = norm.normalize(torch.from_numpy(batch), channel_dim=1)  # type: ignore[attr-defined]
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return float(counter.get_total_flops())


def _gate(paths: dict[str, Callable]) -> dict[str, str]:
    """The service's parity gate on the demo model (photographs + its own val scenes)."""
    from ccnet.inference.precision.gate import gate_data, measure_gate

    data = gate_data("image", 6, {"name": "ccnet synth", "seed": 0, "size": 128})
    reference = paths["torch eager fp32"]
    others = {k: v for k, v in paths.items() if k != "torch eager fp32"}
    figures = measure_gate(reference, others, data)
    return {
        name: (
            f"photos {100 * f.photo_agreement:.2f} %, val {100 * f.val_agreement:.2f} %, "
            f"mIoU {f.miou:.2f} vs {f.miou_fp32:.2f} ({'pass' if f.passed else 'FAIL'})"
        )
        for name, f in figures.items()
    }


def bench_case(case: str, workdir: Path, threads: int, rounds: int) -> str:
    name, _, side_text = case.partition("@")
    side = int(side_text or 512)
    checkpoint = _checkpoint(name, workdir)
    paths, model, norm = _torch_paths(checkpoint)
    with contextlib.suppress(ImportError):
        paths.update(_ort_paths(checkpoint, workdir, threads))
    batch = _photo(side)
    flops = _flops(model, norm, batch)
    torch.set_num_threads(threads)
    outputs = {path: run(batch) for path, run in paths.items()}
    # the peaks right before this case's timings: a shared machine's load drifts
    peaks = gemm_peaks(threads)
    torch.set_num_threads(threads)
    reference = outputs["torch eager fp32"].argmax(1)
    times = time_interleaved({k: (lambda r=r: r(batch)) for k, r in paths.items()}, rounds, 1)
    gate = _gate(paths) if name == "ccnet-tiny" else {}
    rows = []
    base = times["torch eager fp32"]
    for path, ms in times.items():
        gflops = flops / (ms / 1e3) / 1e9
        # int8 has no GEMM peak of its own here: it is set against the fp32 one
        peak = peaks["bf16"] if "bf16" in path else peaks["fp32"]
        agreement = float((outputs[path].argmax(1) == reference).mean())
        rows.append(
            [
                path,
                f"{ms:.1f}",
                f"{base / ms:.2f}x",
                f"{gflops:.0f}",
                f"{100 * gflops / peak:.0f} %",
                f"{100 * agreement:.2f} %",
                gate.get(path, ""),
            ]
        )
    headers = [
        "path",
        "ms",
        "vs fp32 eager",
        "GFLOP/s",
        "of GEMM peak",
        "argmax agreement (astronaut)",
        "parity gate",
    ]
    weights = "trained demo" if name == "ccnet-tiny" else "untrained, 19 classes"
    title = (
        f"### {name} ({weights}), 1×3×{side}×{side}, {threads} thread(s), "
        f"{flops / 1e9:.1f} GFLOP; GEMM peaks (2048² matmul, just before): fp32 "
        f"{peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s"
    )
    return title + "\n\n" + format_table(headers, rows)


def _cpu_line() -> str:
    from ccnet.inference.precision.capabilities import detect_cpu

    cpu = detect_cpu()
    flags = ", ".join(cpu.flags) or "none of AMX/AVX512-BF16/VNNI"
    return f"CPU: {cpu.model} ({cpu.isa}; {flags}), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", help="MODEL@SIDE (default: the issue's)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per path")
    parser.add_argument("--quick", action="store_true", help="one tiny case, 2 rounds")
    parser.add_argument("--workdir", type=Path, help="keep exports here (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # onnxruntime.quantization's advice on pre-processing
    cases = args.cases or (QUICK_CASES if args.quick else CASES)
    rounds = 2 if args.quick else args.rounds
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        print(_cpu_line(), f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
        for case in cases:
            print(bench_case(case, workdir, args.threads, rounds), "\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
