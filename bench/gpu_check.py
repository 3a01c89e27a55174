"""GPU check of the criss-cross attention CUDA kernels: build, correctness, timings.

Builds the PyTorch extension over the TensorRT plugin's kernels (export/cuda_ext.py), checks it
against the reference op (fp32 within 1e-5, fp16 within 1e-3 of the largest output, against a
float64 evaluation of the same inputs) in 2D and 3D, for every aggregation kernel, then times it
side by side with the einsum formulation (bench/cca_op.py) and the reference op, and prints a
table with speed-ups and peak memory. Run by bench/gpu_check.sh; exit status 1 when a check
fails.

Usage:
    python -m bench.gpu_check             # on a CUDA machine (a few minutes with the build)
    python -m bench.gpu_check --dry-run   # anywhere: what runs without a GPU, then exit 0
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from bench._measure import format_table, time_interleaved
from bench.cca_op import einsum_cca, einsum_cca_3d
from export import cuda_ext
from model._axial import axial_attention_fast, axial_attention_reference

Shape = tuple[int, ...]  # (B, Cq, C, *spatial)
Op = Callable[[Tensor, Tensor, Tensor], Tensor]

CHECK_SHAPES: list[Shape] = [
    (2, 8, 16, 13, 21),
    (1, 64, 96, 33, 65),
    (3, 4, 40, 1, 9),
    (1, 5, 7, 17, 1),
    (1, 16, 24, 9, 700),  # rows too long for shared memory on small GPUs: recomputed energies
    (2, 8, 16, 3, 7, 11),
    (1, 16, 40, 4, 33, 17),
    (1, 4, 8, 5, 1, 1),
]
#: The issue's 2D shape and a 3D clip of similar size.
TIMING_SHAPES: list[Shape] = [(1, 64, 512, 129, 257), (1, 64, 512, 8, 65, 129)]
QUICK_TIMING_SHAPES: list[Shape] = [(1, 32, 128, 65, 97), (1, 32, 128, 4, 33, 49)]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3}
DTYPES = (torch.float32, torch.float16)


def _inputs(shape: Shape, dtype: torch.dtype, device: str, seed: int = 0):
    B, Cq, C, *spatial = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Cq, *spatial, generator=gen)
    k = torch.randn(B, Cq, *spatial, generator=gen)
    v = torch.randn(B, C, *spatial, generator=gen)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def _einsum(three_d: bool) -> Op:
    baseline = einsum_cca_3d if three_d else einsum_cca

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # bench/cca_op.py builds its diagonal masks with torch.arange / torch.eye on the default
        # device: make that the inputs' device so the baseline runs on the GPU as written.
        with torch.device(q.device):
            return baseline(q, k, v)

    return run


def _relative_error(out: Tensor, ref: Tensor) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


def check_correctness(device: str) -> tuple[str, bool]:
    """Kernel vs float64 reference on the same (rounded) inputs, every path."""
    rows, ok = [], True
    for shape in CHECK_SHAPES:
        three_d = len(shape) == 6
        op = (
            cuda_ext.criss_cross_attention_3d_cuda
            if three_d
            else cuda_ext.criss_cross_attention_cuda
        )
        for dtype in DTYPES:
            q, k, v = _inputs(shape, dtype, device, seed=3)
            with torch.no_grad():
                ref = axial_attention_reference(q.double(), k.double(), v.double())
                variants = {"auto": {}, "simt": {"aggregation": "simt"}}
                if dtype == torch.float16:
                    variants["tensor_core"] = {"aggregation": "tensor_core"}
                variants["recomputed energies"] = {"recompute_energies": True}
                for name, options in variants.items():
                    out = op(q, k, v, **options)
                    err = _relative_error(out, ref)
                    passed = bool(torch.isfinite(out).all()) and err <= TOLERANCE[dtype]
                    ok &= passed
                    rows.append([
                        str(shape), str(dtype).removeprefix("torch."), name,
                        f"{err:.2e}", f"{TOLERANCE[dtype]:.0e}", "ok" if passed else "FAIL",
                    ])  # fmt: skip
    headers = ["shape (B,Cq,C,spatial)", "dtype", "path", "rel. error", "tolerance", "result"]
    return format_table(headers, rows), ok


def _forward(fn: Op, q: Tensor, k: Tensor, v: Tensor) -> Callable[[], object]:
    def run() -> None:
        with torch.no_grad():
            fn(q, k, v)

    return run


def _peak_mib(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_candidates(shapes: list[Shape], rounds: int, device: str) -> str:
    headers = [
        "shape (B,Cq,C,spatial)", "dtype", "implementation", "fwd ms", "speed-up vs einsum",
        "peak MiB",
    ]  # fmt: skip
    rows = []
    for shape in shapes:
        three_d = len(shape) == 6
        kernel = (
            cuda_ext.criss_cross_attention_3d_cuda
            if three_d
            else cuda_ext.criss_cross_attention_cuda
        )
        candidates: dict[str, Op] = {
            "einsum (baseline)": _einsum(three_d),
            "reference": axial_attention_reference,
            "fast (PyTorch)": axial_attention_fast,
            "cuda kernel": kernel,
            # fp16 aggregates on tensor cores by default; this row shows what they bring.
            "cuda kernel, CUDA-core aggregation": functools.partial(kernel, aggregation="simt"),
        }
        for dtype in DTYPES:
            q, k, v = _inputs(shape, dtype, device)
            runs = {name: _forward(fn, q, k, v) for name, fn in candidates.items()}
            times = time_interleaved(runs, rounds=rounds, warmup=3)
            memory = {name: _peak_mib(run) for name, run in runs.items()}
            base = times["einsum (baseline)"]
            for name in candidates:
                rows.append([
                    str(shape), str(dtype).removeprefix("torch."), name, f"{times[name]:.3f}",
                    f"{base / times[name]:.2f}×", f"{memory[name]:.1f}",
                ])  # fmt: skip
    return format_table(headers, rows)


def dry_run() -> int:
    """What can be checked without a GPU: sources, the CPU baselines, the clear failure."""
    print("dry run: no GPU work")
    missing = [name for name in ("crissCrossAttentionKernel.cu", "crissCrossAttentionTorch.cpp")
               if not (cuda_ext.SOURCE_DIR / name).is_file()]  # fmt: skip
    if missing:
        print(f"FAIL: missing extension sources in {cuda_ext.SOURCE_DIR}: {missing}")
        return 1
    print(f"extension sources: {cuda_ext.SOURCE_DIR}")
    print(f"extension cache:   {cuda_ext.build_directory()}")
    for shape in QUICK_TIMING_SHAPES:  # the baselines the timing table uses, on the CPU
        q, k, v = _inputs(
            tuple(s if i < 3 else min(s, 9) for i, s in enumerate(shape)), torch.float64, "cpu"
        )
        ref = axial_attention_reference(q, k, v)
        err = _relative_error(_einsum(len(shape) == 6)(q, k, v), ref)
        print(f"einsum baseline vs reference on the CPU, {tuple(q.shape)}: {err:.1e}")
        if err > 1e-10:
            print("FAIL: the einsum baseline disagrees with the reference")
            return 1
    if cuda_ext.has_cuda_kernels():
        print("CUDA kernels are available here: run without --dry-run for the full check")
    else:
        try:
            cuda_ext.load_extension()
        except cuda_ext.CudaKernelsUnavailableError as exc:
            print(f"skipping build, correctness and timing: {exc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="no GPU work; exit 0 if sane")
    parser.add_argument("--quick", action="store_true", help="small timing shapes")
    parser.add_argument("--rounds", type=int, default=20, help="timing rounds per candidate")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: "
          f"{torch.cuda.is_available()}")  # fmt: skip
    if args.dry_run:
        return dry_run()
    if not torch.cuda.is_available():
        print("CUDA toolkit/GPU not available: nothing to check (use --dry-run on CPU machines)")
        return 2
    device = "cuda"
    name = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    print(f"device: {name} (sm_{major}{minor})")

    start = time.perf_counter()
    try:
        cuda_ext.load_extension(verbose=False)
    except cuda_ext.CudaKernelsUnavailableError as exc:
        print(f"FAIL: {exc}")
        return 1
    print(f"extension ready in {time.perf_counter() - start:.1f} s ({cuda_ext.build_directory()})")

    table, ok = check_correctness(device)
    print("\ncorrectness (relative to the largest output, vs float64 reference)")
    print(table)

    shapes = QUICK_TIMING_SHAPES if args.quick else TIMING_SHAPES
    print(f"\ntimings on {name}: forward, no autograd, median of {args.rounds} interleaved rounds")
    print(time_candidates(shapes, args.rounds, device))
    print("\nALL CHECKS PASSED" if ok else "\nCORRECTNESS CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
