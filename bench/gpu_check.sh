#!/usr/bin/env bash
# GPU check of the criss-cross attention kernels, the TensorRT plugin and the TensorRT path of
# the service, run once on a machine with a CUDA GPU; ends with one table (step | result | figure).
#
#   bench/gpu_check.sh            # on a CUDA machine (about 10 minutes on an H100/H200)
#   bench/gpu_check.sh --dry-run  # anywhere: only what runs without a GPU; exit 0 when sane
#
# Steps, each a row of the final table (a step whose tools are missing says "skipped" and why):
#   1. nvcc: the kernels compile for sm_80 and sm_90 and to compute_120 PTX;
#   2. the kernels' math on the CPU (host harness vs the reference op);
#   3. the plugin library with CMake (TensorRT headers needed) and ccnet_plugin_check, which
#      also enqueues fp32 problems on the GPU;
#   4. the PyTorch extension: parity fp32/fp16, 2D/3D, every aggregation path, rows longer than
#      the shared-memory path; timings vs the einsum formulation (fp16 target ≥ 3×);
#   5. a plain dlopen of the library registers both creators in TensorRT's registry;
#   6. engines (fp32, fp16) from the demo export with the plugin, checked against ONNX Runtime;
#   7. `ccnet serve --backend tensorrt` cold start from the demo .pt (prepare step + worker).
# Steps 5-7 need the `tensorrt` Python package and a CUDA build of torch.
#
# Environment: PYTHON (default .venv/bin/python, else python3), TENSORRT_INCLUDE_DIR or
# TensorRT_ROOT (headers; e.g. copy the include/ folder of github.com/NVIDIA/TensorRT to
# build/trt-include, which git ignores, and carry it), CCNET_EXTENSIONS_DIR (extension build
# cache), GPU_CHECK_BUILD_DIR (kept afterwards), GPU_CHECK_QUICK=1 (small timing shapes).
set -uo pipefail

dry_run=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h | --help)
            sed -n '2,24p' "$0"
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

if [[ -n "${PYTHON:-}" ]]; then
    python=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python=python3
fi
if [[ -n "${GPU_CHECK_BUILD_DIR:-}" ]]; then
    build_dir=$GPU_CHECK_BUILD_DIR
    mkdir -p "$build_dir"
else
    build_dir=$(mktemp -d "${TMPDIR:-/tmp}/ccnet-gpu-check.XXXXXX")
    trap 'rm -rf "$build_dir"' EXIT
fi
summary_file=$build_dir/summary.txt
: > "$summary_file"

step() { printf '\n== %s\n' "$*"; }
row() { printf '%s | %s | %s\n' "$1" "$2" "$3" >> "$summary_file"; }
# Runs a command, echoes its output, and keeps its SUMMARY lines for the table.
run() {
    printf '$ %s\n' "$*"
    local log=$build_dir/step.log
    "$@" 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    grep '^SUMMARY ' "$log" | sed 's/^SUMMARY //' >> "$summary_file" || true
    return "$status"
}

step "environment"
echo "repository: $root"
echo "python:     $python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
"$python" -c 'import torch; print(f"torch:      {torch.__version__}, CUDA {torch.version.cuda}, device visible: {torch.cuda.is_available()}")'
"$python" -c 'import tensorrt; print(f"tensorrt:   {tensorrt.__version__}")' 2> /dev/null \
    || echo "tensorrt:   not installed (steps 5-7 are skipped)"
if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
else
    echo "nvidia-smi: not found"
fi
nvcc=$(command -v nvcc || true)
if [[ -z "$nvcc" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then
    nvcc=$CUDA_HOME/bin/nvcc
fi
echo "nvcc:       ${nvcc:-not found}${nvcc:+ ($("$nvcc" --version | tail -n 1))}"
gpu=0
if [[ $dry_run -eq 0 ]] && "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    gpu=1
fi
has_trt=0
if [[ $gpu -eq 1 ]] && "$python" -c 'import tensorrt' 2> /dev/null; then
    has_trt=1
fi
echo "build dir:  $build_dir"

step "1. CUDA kernels: nvcc compile for sm_80, sm_90 and compute_120 PTX"
kernel=export/tensorrt/crissCrossAttentionPlugin/crissCrossAttentionKernel.cu
if [[ -n "$nvcc" ]]; then
    if run "$nvcc" -std=c++17 -O3 --threads 2 -Xcompiler -Wall,-Wextra \
        -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
        -gencode arch=compute_120,code=compute_120 \
        -c "$kernel" -o "$build_dir/crissCrossAttentionKernel.o"; then
        row "nvcc: kernels sm_80/sm_90 + PTX" ok "compiled"
    else
        row "nvcc: kernels sm_80/sm_90 + PTX" FAIL "see the log"
    fi
else
    row "nvcc: kernels sm_80/sm_90 + PTX" skipped "nvcc not found"
fi

step "2. kernel math on the CPU (host harness vs model.axial.axial_attention_reference)"
if run "$python" -m pytest -q -p no:cacheprovider tests/export/test_native_sources.py \
    -k "kernel_math or workspace or short_workspace"; then
    row "kernel math on the CPU" ok "host harness vs reference"
else
    row "kernel math on the CPU" FAIL "see the log"
fi

step "3. TensorRT plugin library (CMake) and ccnet_plugin_check"
trt_include=""
for candidate in "${TENSORRT_INCLUDE_DIR:-}" "${TensorRT_ROOT:+$TensorRT_ROOT/include}" \
    build/trt-include /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu \
    /usr/local/TensorRT/include /opt/tensorrt/include; do
    if [[ -n "$candidate" && -f "$candidate/NvInferRuntime.h" ]]; then
        trt_include=$candidate
        break
    fi
done
plugin=""
if [[ -z "$trt_include" ]]; then
    row "plugin library (CMake)" skipped "TensorRT headers not found (TENSORRT_INCLUDE_DIR)"
elif ! command -v cmake > /dev/null 2>&1 || [[ -z "$nvcc" ]]; then
    row "plugin library (CMake)" skipped "cmake or nvcc not found"
else
    # The GPU's own SASS (quick) plus the newest PTX, as the default list carries.
    archs="90-real;120"
    if [[ $gpu -eq 1 ]]; then
        archs="$("$python" -c 'import torch; print("".join(map(str, torch.cuda.get_device_capability())))')-real;120"
    fi
    if run cmake -S export/tensorrt -B "$build_dir/trt" -DTensorRT_INCLUDE_DIR="$trt_include" \
        -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$archs" \
        && run cmake --build "$build_dir/trt" -j "$(nproc)"; then
        plugin=$build_dir/trt/libccnet_trt_plugin.so
        needed=$(readelf -d "$plugin" 2> /dev/null | grep -c 'libcudart' || true)
        row "plugin library (CMake)" ok "archs $archs; libcudart dependencies: $needed (static)"
        checker_args=("$plugin")
        what="interface checks"
        if [[ $gpu -eq 1 ]]; then
            checker_args+=(--run)
            what="interface checks, fp32 enqueue on the GPU vs the CPU"
        fi
        if run "$build_dir/trt/ccnet_plugin_check" "${checker_args[@]}"; then
            row "ccnet_plugin_check" ok "$what"
        else
            row "ccnet_plugin_check" FAIL "see the log"
        fi
    else
        row "plugin library (CMake)" FAIL "see the log"
    fi
fi

step "4. PyTorch extension: build, parity, timings"
quick=()
if [[ "${GPU_CHECK_QUICK:-0}" == 1 ]]; then
    quick=(--quick)
fi
if [[ $dry_run -eq 1 ]]; then
    run "$python" -m bench.gpu_check --dry-run
    row "kernel parity and timings" skipped "dry run"
elif [[ $gpu -eq 1 ]]; then
    run "$python" -m bench.gpu_check kernels "${quick[@]}" \
        || row "kernel parity and timings" FAIL "see the log"
else
    row "kernel parity and timings" skipped "no CUDA device visible to PyTorch"
fi

step "5-7. TensorRT: plain dlopen, engines with the plugin, serve cold start"
if [[ $has_trt -eq 0 ]]; then
    row "dlopen / engine / serve" skipped "needs a GPU and the tensorrt Python package"
elif [[ -z "$plugin" ]]; then
    row "dlopen / engine / serve" skipped "the plugin library was not built (step 3)"
else
    run "$python" -m bench.gpu_check dlopen --plugin "$plugin" || true
    run "$python" -m bench.gpu_check engine --plugin "$plugin" --work "$build_dir/work" || true
    run "$python" -m bench.gpu_check serve --plugin "$plugin" --work "$build_dir/work" || true
fi

step "summary"
device="no GPU"
if [[ $gpu -eq 1 ]]; then
    device=$("$python" -c 'import torch; print(torch.cuda.get_device_name())')
fi
echo "device: $device; $(date -u +%Y-%m-%dT%H:%MZ)"
{
    echo "step | result | figure"
    echo "---|---|---"
    cat "$summary_file"
} | "$python" -c '
import sys
rows = [[cell.strip() for cell in line.split("|")] for line in sys.stdin if line.strip()]
widths = [max(len(r[i]) for r in rows if len(r) > i) for i in range(3)]
for r in rows:
    if set(r[0]) == {"-"}:
        r = ["-" * w for w in widths]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
'
if grep -q '| FAIL |' "$summary_file"; then
    echo "SOME CHECKS FAILED"
    exit 1
fi
echo "no check failed"
