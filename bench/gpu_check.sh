#!/usr/bin/env bash
# GPU check of the criss-cross attention CUDA kernels and the TensorRT plugin.
#
#   bench/gpu_check.sh            # on a CUDA machine: build, check, time (< 5 minutes on an H100)
#   bench/gpu_check.sh --dry-run  # anywhere: only what runs without a GPU; exit 0 when sane
#
# Steps: environment; nvcc compile of the kernels; the kernels' math on the CPU (host harness
# vs the reference op); the PyTorch extension (build, fp32/fp16 2D/3D correctness, timings vs
# the einsum formulation and the reference op: bench/gpu_check.py); the TensorRT plugin library
# with CMake when TensorRT headers are found (TensorRT_ROOT, TENSORRT_INCLUDE_DIR or the system
# paths), then ccnet_plugin_check, which also enqueues on the GPU when there is one.
#
# Environment: PYTHON (default .venv/bin/python, else python3), TensorRT_ROOT,
# TENSORRT_INCLUDE_DIR, CCNET_EXTENSIONS_DIR (extension build cache), GPU_CHECK_BUILD_DIR.
set -euo pipefail

dry_run=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h | --help)
            sed -n '2,15p' "$0"
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n== %s\n' "$*"; }
run() {
    printf '$ %s\n' "$*"
    "$@"
}

if [[ -n "${PYTHON:-}" ]]; then
    python=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python=python3
fi
if [[ -n "${GPU_CHECK_BUILD_DIR:-}" ]]; then
    build_dir=$GPU_CHECK_BUILD_DIR # kept: holds libccnet_trt_plugin.so afterwards
    mkdir -p "$build_dir"
else
    build_dir=$(mktemp -d "${TMPDIR:-/tmp}/ccnet-gpu-check.XXXXXX")
    trap 'rm -rf "$build_dir"' EXIT
fi

step "environment"
echo "repository: $root"
echo "python:     $python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
"$python" -c 'import torch; print(f"torch:      {torch.__version__}, CUDA {torch.version.cuda}, device visible: {torch.cuda.is_available()}")'
if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
else
    echo "nvidia-smi: not found"
fi
nvcc=$(command -v nvcc || true)
if [[ -z "$nvcc" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then
    nvcc=$CUDA_HOME/bin/nvcc
fi
if [[ -n "$nvcc" ]]; then
    echo "nvcc:       $nvcc ($("$nvcc" --version | tail -n 1))"
else
    echo "nvcc:       not found"
fi
gpu=0
if [[ $dry_run -eq 0 ]] && "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    gpu=1
fi
echo "build dir:  $build_dir"

step "CUDA kernels: nvcc compile for sm_80 and sm_90"
kernel=export/tensorrt/crissCrossAttentionPlugin/crissCrossAttentionKernel.cu
if [[ -n "$nvcc" ]]; then
    run "$nvcc" -std=c++17 -O3 --threads 2 -Xcompiler -Wall,-Wextra \
        -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
        -c "$kernel" -o "$build_dir/crissCrossAttentionKernel.o"
else
    echo "skipped: nvcc not found"
fi

step "kernel math on the CPU (host harness vs model._axial.axial_attention_reference)"
run "$python" -m pytest -q -p no:cacheprovider tests/export/test_native_sources.py \
    -k "kernel_math or workspace or short_workspace"

step "PyTorch extension: build, correctness, timings"
if [[ $dry_run -eq 1 ]]; then
    run "$python" -m bench.gpu_check --dry-run
elif [[ $gpu -eq 1 ]]; then
    run "$python" -m bench.gpu_check
else
    echo "CUDA toolkit/GPU not available: no CUDA device is visible to PyTorch." >&2
    echo "Run with --dry-run for the checks that need no GPU." >&2
    exit 1
fi

step "TensorRT plugin library (CMake)"
trt_include=""
for candidate in "${TENSORRT_INCLUDE_DIR:-}" "${TensorRT_ROOT:+$TensorRT_ROOT/include}" \
    /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu /usr/local/TensorRT/include /opt/tensorrt/include; do
    if [[ -n "$candidate" && -f "$candidate/NvInferRuntime.h" ]]; then
        trt_include=$candidate
        break
    fi
done
if [[ -z "$trt_include" ]]; then
    echo "skipped: TensorRT headers not found (set TensorRT_ROOT or TENSORRT_INCLUDE_DIR)"
elif ! command -v cmake > /dev/null 2>&1 || [[ -z "$nvcc" ]]; then
    echo "skipped: cmake or nvcc not found"
else
    # One architecture keeps the build short: the GPU's own when there is one, else sm_90.
    archs=90
    if [[ $gpu -eq 1 ]]; then
        archs=$("$python" -c 'import torch; print("".join(map(str, torch.cuda.get_device_capability())))')
    fi
    run cmake -S export/tensorrt -B "$build_dir/trt" -DTensorRT_INCLUDE_DIR="$trt_include" \
        -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$archs"
    run cmake --build "$build_dir/trt" -j "$(nproc)"
    checker_args=("$build_dir/trt/libccnet_trt_plugin.so")
    if [[ $gpu -eq 1 ]]; then
        checker_args+=(--run)
    fi
    run "$build_dir/trt/ccnet_plugin_check" "${checker_args[@]}"
fi

step "done"
if [[ $dry_run -eq 1 ]]; then
    echo "dry run finished: the GPU parts were skipped"
fi
