"""GPU check of the criss-cross attention CUDA kernels and the TensorRT path.

``kernels`` (the default): builds the PyTorch extension over the TensorRT plugin's kernels
(export/cuda_ext.py), checks it against the reference op (fp32 within 1e-5, fp16 within 1e-3 of
the largest output, against a float64 evaluation of the same inputs) in 2D and 3D, for every
aggregation kernel and with rows longer than the shared-memory path holds, then times it side
by side with the einsum formulation (bench/cca_op.py) and the reference op (target: fp16 ≥ 3×
the einsum formulation), and prints a table with speed-ups and peak memory.

``engine``, ``dlopen``, ``serve`` (need TensorRT and the built plugin library): an engine from
the demo export with the plugin and its parity against ONNX Runtime; the creators registered by
a plain dlopen of the library; a ``ccnet serve --backend tensorrt`` cold start from a ``.pt``.

Every check prints ``SUMMARY <check> | <result> | <figure>`` lines that bench/gpu_check.sh
gathers into one table; exit status 1 when a check fails.

Usage:
    python -m bench.gpu_check [kernels] [--quick]   # on a CUDA machine
    python -m bench.gpu_check --dry-run              # anywhere: what runs without a GPU
    python -m bench.gpu_check engine --plugin LIB --work DIR
    python -m bench.gpu_check dlopen --plugin LIB
    python -m bench.gpu_check serve --plugin LIB --work DIR
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from bench._measure import format_table, time_interleaved
from bench.cca_op import einsum_cca, einsum_cca_3d
from ccnet.export import cuda_ext
from ccnet.inference.demo import BUNDLED_MODELS
from ccnet.model.axial import axial_attention_fast, axial_attention_reference

Shape = tuple[int, ...]  # (B, Cq, C, *spatial)
Op = Callable[[Tensor, Tensor, Tensor], Tensor]

CHECK_SHAPES: list[Shape] = [
    (2, 8, 16, 13, 21),
    (1, 64, 96, 33, 65),
    (3, 4, 40, 1, 9),
    (1, 5, 7, 17, 1),
    (1, 16, 24, 9, 700),  # rows too long for shared memory on small GPUs: recomputed energies
    (1, 8, 16, 3, 1500),  # too long for any GPU's shared memory (H100/H200 hold ~830 keys)
    (1, 4, 8, 2, 3, 1100),  # the same in 3D
    (2, 8, 40, 40, 24),  # 16-line fp16 tiles on H: several line tiles, partial last tile
    (2, 8, 16, 3, 7, 11),
    (1, 16, 40, 4, 33, 17),
    (1, 4, 8, 5, 1, 1),
]
#: The issue's 2D shape and a 3D clip of similar size.
TIMING_SHAPES: list[Shape] = [(1, 64, 512, 129, 257), (1, 64, 512, 8, 65, 129)]
QUICK_TIMING_SHAPES: list[Shape] = [(1, 32, 128, 65, 97), (1, 32, 128, 4, 33, 49)]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3}
TF32_TOLERANCE = 2e-3  # opt-in TF32 aggregation of fp32: values and probabilities rounded
DTYPES = (torch.float32, torch.float16)
SPEEDUP_TARGET = 3.0  # fp16 kernel vs the einsum formulation, 2D timing shape
ROOT = Path(__file__).resolve().parents[1]
DEMO = BUNDLED_MODELS[0]


def summary(check: str, passed: bool | None, figure: str) -> None:
    """One row of bench/gpu_check.sh's final table (None: measured, no pass/fail)."""
    result = "-" if passed is None else "ok" if passed else "FAIL"
    print(f"SUMMARY {check} | {result} | {figure}", flush=True)


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
                if dtype == torch.float32:
                    variants["tf32 (opt-in)"] = {"aggregation": "tf32"}
                for name, options in variants.items():
                    out = op(q, k, v, **options)
                    err = _relative_error(out, ref)
                    tolerance = TF32_TOLERANCE if name.startswith("tf32") else TOLERANCE[dtype]
                    passed = bool(torch.isfinite(out).all()) and err <= tolerance
                    ok &= passed
                    rows.append([
                        str(shape), str(dtype).removeprefix("torch."), name,
                        f"{err:.2e}", f"{tolerance:.0e}", "ok" if passed else "FAIL",
                    ])  # fmt: skip
    headers = ["shape (B,Cq,C,spatial)", "dtype", "path", "rel. error", "tolerance", "result"]
    groups = [(str(d).removeprefix("torch."), TOLERANCE[d], False) for d in DTYPES]
    groups.append(("float32", TF32_TOLERANCE, True))
    for name, tolerance, tf32 in groups:
        mine = [r for r in rows if r[1] == name and r[2].startswith("tf32") == tf32]
        errors = [float(r[3]) for r in mine]
        summary(
            f"kernel parity {name}{' TF32 (opt-in)' if tf32 else ''} (2D+3D, long rows)",
            all(r[5] == "ok" for r in mine),
            f"max rel. error {max(errors):.1e} (tol {tolerance:.0e}), {len(errors)} cases",
        )
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
            # fp32 on tensor cores (opt-in, sm_80+); for fp16 the same as the default.
            "cuda kernel, TF32 aggregation": functools.partial(kernel, aggregation="tf32"),
        }
        for dtype in DTYPES:
            q, k, v = _inputs(shape, dtype, device)
            runs = {name: _forward(fn, q, k, v) for name, fn in candidates.items()}
            times = time_interleaved(runs, rounds=rounds, warmup=3)
            memory = {name: _peak_mib(run) for name, run in runs.items()}
            base = times["einsum (baseline)"]
            if dtype == torch.float16 and shape == shapes[0]:
                speedup = base / times["cuda kernel"]
                summary(
                    f"op fp16 vs einsum {shape}",
                    speedup >= SPEEDUP_TARGET,
                    f"{speedup:.2f}× (target ≥ {SPEEDUP_TARGET:.0f}×), "
                    f"{times['cuda kernel']:.3f} ms vs {base:.3f} ms",
                )
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


def _ccnet(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ccnet", *args]
    print("$ ccnet " + " ".join(args), flush=True)
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    print(done.stdout[-4000:] + done.stderr[-4000:], flush=True)
    return done


def check_engine(plugin: Path, work: Path) -> bool:
    """The demo model exported (fp32 and fp16) and built into engines with the plugin; the
    build itself compares each with ONNX Runtime and records the verdict in engine.json."""
    ok = True
    for dtype in ("fp32", "fp16"):
        onnx_dir = work / f"onnx-{dtype}"
        engine = work / f"engine-{dtype}.plan"
        done = _ccnet("export", "onnx", str(DEMO), "-o", str(onnx_dir), "--dtype", dtype)
        if done.returncode == 0:
            done = _ccnet(
                "export", "tensorrt", str(onnx_dir / "model.onnx"), "-o", str(engine),
                "--plugin", str(plugin), "--min", "1x3x64x64", "--opt", "2x3x256x384",
                "--max", "4x3x512x512",
            )  # fmt: skip
        if done.returncode != 0:
            summary(f"engine {dtype} with plugin vs ORT", False, "build failed (log above)")
            ok = False
            continue
        meta = json.loads(engine.with_suffix(".json").read_text())
        case = meta["check"]["cases"][0]
        passed = bool(meta["check"]["passed"]) and meta["plugin_layers"] > 0
        figures = ", ".join(f"{k} {v}" for k, v in case.items() if isinstance(v, int | float))
        summary(
            f"engine {dtype} with plugin vs ORT",
            passed,
            f"{meta['plugin_layers']} plugin layers; {figures}",
        )
        ok &= passed
    return ok


_DLOPEN = """
import ctypes, json, sys
import tensorrt as trt
registry = trt.get_plugin_registry()
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
ours = sorted((c.name, c.plugin_version, c.plugin_namespace) for c in registry.all_creators
              if c.name.startswith("CrissCrossAttention"))
handle = registry.load_library(sys.argv[1])
print(json.dumps({"creators": ours, "load_library": handle is not None}))
"""


def check_dlopen(plugin: Path) -> bool:
    """A plain dlopen (what LD_PRELOAD and Triton's plugins= do) in a fresh process with the
    full TensorRT runtime: both creators registered once, and loadLibrary still works."""
    done = subprocess.run(
        [sys.executable, "-c", _DLOPEN, str(plugin)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(done.stdout + done.stderr)
        summary("plain dlopen registers the creators", False, "the check did not run")
        return False
    passed = len(result["creators"]) == 2 and result["load_library"]
    names = ", ".join(name for name, _, _ in result["creators"]) or "none"
    summary(
        "plain dlopen registers the creators",
        passed,
        f"{names}; loadLibrary afterwards {'ok' if result['load_library'] else 'FAILED'}",
    )
    return passed


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_serve(plugin: Path, work: Path, timeout: float = 900) -> bool:
    """``ccnet serve --backend tensorrt`` from the demo .pt with an empty cache: the prepare step
    exports and builds the engine, the worker loads it; time to /readyz 200 and one request."""
    port = _port()
    env = {**os.environ, "CCNET_TRT_PLUGIN": str(plugin)}
    command = [
        sys.executable, "-m", "ccnet", "serve", "--model", str(DEMO), "--backend",
        "tensorrt", "--host", "127.0.0.1", "--port", str(port), "--cache-dir",
        str(work / "serve-cache"), "--log-format", "text",
    ]  # fmt: skip
    log = (work / "serve.log").open("w")
    began = time.perf_counter()
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    ready, backend, status = None, "?", 0
    try:
        while time.perf_counter() - began < timeout and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        ready = time.perf_counter() - began
                        break
            except OSError:
                pass
            time.sleep(1)
        if ready is not None:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as response:
                backend = json.loads(response.read())["models"][0]["backend"]
            from PIL import Image

            image = work / "photo.png"
            Image.new("RGB", (320, 240), (90, 140, 200)).save(image)
            request = urllib.request.Request(
                f"{url}/v1/segment", data=image.read_bytes(), headers={"Content-Type": "image/png"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                status = response.status
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print((work / "serve.log").read_text()[-6000:])
    passed = ready is not None and backend == "tensorrt" and status == 200
    figure = f"ready in {ready:.0f} s" if ready is not None else "never ready"
    summary("serve --backend tensorrt cold start (.pt)", passed, f"{figure}; backend {backend}, "
            f"POST /v1/segment {status}")  # fmt: skip
    return passed


def _trt_command(argv: list[str]) -> int | None:
    """The engine / dlopen / serve subcommands; None when argv asks for the kernel check."""
    if not argv or argv[0] not in ("engine", "dlopen", "serve"):
        return None
    parser = argparse.ArgumentParser(prog=f"bench.gpu_check {argv[0]}")
    parser.add_argument("--plugin", type=Path, required=True, help="libccnet_trt_plugin.so")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ccnet-gpu-check"))
    args = parser.parse_args(argv[1:])
    args.work.mkdir(parents=True, exist_ok=True)
    if argv[0] == "engine":
        return 0 if check_engine(args.plugin, args.work) else 1
    if argv[0] == "dlopen":
        return 0 if check_dlopen(args.plugin) else 1
    return 0 if check_serve(args.plugin, args.work) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = _trt_command(argv)
    if code is not None:
        return code
    if argv and argv[0] == "kernels":
        argv = argv[1:]
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
