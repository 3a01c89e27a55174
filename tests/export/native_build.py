"""Finding the native toolchain and building the plugin library for the tests (no GPU needed).

Each finder returns None with nothing found; the fixtures turn that into a skip whose reason
says what to install or set. The plugin is built with one SASS architecture (quick) exactly as
CMake links it: hidden visibility, ``--no-undefined``, the CUDA runtime linked statically.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRT_DIR = ROOT / "export" / "tensorrt"
PLUGIN_DIR = TRT_DIR / "crissCrossAttentionPlugin"
KERNEL_SOURCE = PLUGIN_DIR / "crissCrossAttentionKernel.cu"
LIBRARY_UNITS = (
    TRT_DIR / "ccnetPluginLibrary.cpp",
    TRT_DIR / "common" / "pluginLogging.cpp",
    PLUGIN_DIR / "crissCrossAttentionPlugin.cpp",
)
CXX_FLAGS = ["-std=c++17", "-Wall", "-Wextra", "-Werror"]
_SYSTEM_TENSORRT = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu")

NO_TENSORRT_HEADERS = (
    "TensorRT headers not found: set TENSORRT_INCLUDE_DIR to a folder holding NvInferRuntime.h "
    "(e.g. the include/ folder of github.com/NVIDIA/TensorRT)"
)
NO_LEAN_RUNTIME = (
    "the lean TensorRT runtime is not installed "
    "(pip install tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings; the dev extra has it)"
)


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def find_cxx() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def find_cuda_include() -> Path | None:
    """A folder holding cuda_runtime_api.h (nvcc on PATH may be a wrapper script)."""
    nvcc = find_nvcc()
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if nvcc is not None:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for home in filter(None, candidates):
        include = Path(home) / "include"
        if (include / "cuda_runtime_api.h").is_file():
            return include
    return None


def find_tensorrt_include() -> Path | None:
    """``$TENSORRT_INCLUDE_DIR``, else a system TensorRT's headers."""
    named = os.environ.get("TENSORRT_INCLUDE_DIR")
    for folder in ([named] if named else []) + list(_SYSTEM_TENSORRT):
        if (Path(folder) / "NvInferRuntime.h").is_file():
            return Path(folder)
    return None


def lean_runtime_missing() -> str | None:
    """Why the lean runtime's Python module cannot be imported (None when it can)."""
    try:
        import tensorrt_lean_bindings  # noqa: F401
    except ImportError:
        return NO_LEAN_RUNTIME
    return None


def plugin_flags(tensorrt_include: Path, cuda_include: Path) -> list[str]:
    # TensorRT's own headers carry deprecation warnings: include them as system headers.
    return ["-isystem", str(tensorrt_include), "-isystem", str(cuda_include), "-I", str(TRT_DIR)]


def build_plugin(out: Path, tensorrt_include: Path, arch: str = "80") -> Path:
    """``out/libccnet_trt_plugin.so`` (kernels for sm_<arch> only, to stay quick).

    Raises:
        AssertionError: a compile or link step failed (the message holds its output).
        FileNotFoundError: nvcc, a C++ compiler or the CUDA headers are missing.
    """
    nvcc, cxx, cuda_include = find_nvcc(), find_cxx(), find_cuda_include()
    if nvcc is None or cxx is None or cuda_include is None:
        raise FileNotFoundError("nvcc, a C++ compiler and the CUDA headers are needed")
    out.mkdir(parents=True, exist_ok=True)
    flags = plugin_flags(tensorrt_include, cuda_include)
    objects = []
    for unit in LIBRARY_UNITS:
        obj = out / f"{unit.stem}.o"
        cmd = [cxx, *CXX_FLAGS, "-O2", "-fPIC", "-fvisibility=hidden", *flags, "-c", str(unit)]
        done = run([*cmd, "-o", str(obj)])
        assert done.returncode == 0, f"{unit.name}:\n{done.stderr}"
        objects.append(str(obj))
    kernel = out / "kernel.o"
    cmd = [nvcc, "-std=c++17", "-O2", "-Xcompiler", "-fPIC,-fvisibility=hidden"]
    cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}", "-c", str(KERNEL_SOURCE)]
    done = run([*cmd, "-o", str(kernel)])
    assert done.returncode == 0, f"{KERNEL_SOURCE.name}:\n{done.stderr}"
    library = out / "libccnet_trt_plugin.so"
    link = [nvcc, "-shared", "-cudart", "static", "-o", str(library), *objects, str(kernel)]
    done = run([*link, "-Xlinker", "--no-undefined"])
    assert done.returncode == 0, f"link:\n{done.stderr}"
    return library
