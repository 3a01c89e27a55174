"""Native sources of the criss-cross attention op: kernels, their math, the TensorRT plugin.

(a) the CUDA kernels compile for sm_80 and sm_90 and to PTX for the newest virtual architecture
    (nvcc, no GPU needed); CMake's default architectures (SASS plus that PTX) are the GPU
    image's, and the plugin links the CUDA runtime statically;
(b) the kernels' per-pixel math (crissCrossAttentionMath.h) runs on the CPU through the host
    harness and matches ``model.axial.axial_attention_reference``, including the workspace
    layout the kernels use;
(c) with ``TENSORRT_INCLUDE_DIR`` pointing at TensorRT's headers: the plugin sources compile
    cleanly and the built library loads and passes its interface checks;
(d) on a CUDA machine (marker ``gpu``): the PyTorch extension over the same kernels matches the
    reference (fp32 within 1e-5, fp16 within 1e-3, relative to the largest output).

Everything is built in pytest's temporary directories; nothing is cached elsewhere.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ccnet.model.axial import axial_attention_reference
from tests.export import native_build

ROOT = Path(__file__).resolve().parents[2]
TRT_DIR = ROOT / "export" / "tensorrt"
PLUGIN_DIR = TRT_DIR / "crissCrossAttentionPlugin"
KERNEL_SOURCE = PLUGIN_DIR / "crissCrossAttentionKernel.cu"
OUR_SOURCES = ("crissCrossAttention", "pluginLogging", "ccnetPluginLibrary", "pluginLoadCheck")
CXX_FLAGS = ["-std=c++17", "-Wall", "-Wextra", "-Werror"]


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _our_warnings(output: str) -> list[str]:
    """Compiler warnings that point into this project's sources (not into vendor headers)."""
    return [
        line
        for line in output.splitlines()
        if "warning" in line.lower() and any(name in line for name in OUR_SOURCES)
    ]


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = native_build.find_nvcc()
    if path is None:
        pytest.skip("nvcc not found: install the CUDA toolkit or put nvcc on PATH / set CUDA_HOME")
    return path


@pytest.fixture(scope="module")
def cxx() -> str:
    path = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if path is None:
        pytest.skip("no C++ compiler (g++ / c++ / $CXX) found")
    return path


@pytest.fixture(scope="module")
def cuda_include() -> Path:
    include = native_build.find_cuda_include()
    if include is None:
        pytest.skip("CUDA headers (cuda_runtime_api.h) not found: set CUDA_HOME")
    return include


# ------------------------------------------------------------------------------------------
# (a) the kernels compile
# ------------------------------------------------------------------------------------------


def _default_architectures() -> list[str]:
    cmake = (TRT_DIR / "CMakeLists.txt").read_text()
    match = re.search(r'set\(CCNET_DEFAULT_CUDA_ARCHITECTURES "([^"]+)"\)', cmake)
    assert match, "export/tensorrt/CMakeLists.txt must set CCNET_DEFAULT_CUDA_ARCHITECTURES"
    return match.group(1).split(";")


def test_kernels_compile_for_sm80_sm90_and_ptx_of_the_newest(nvcc: str, tmp_path: Path) -> None:
    newest = _default_architectures()[-1]
    keep = tmp_path / "keep"
    keep.mkdir()
    cmd = [
        nvcc, "-std=c++17", "-O3", "--threads", "2", "-Xcompiler", "-Wall,-Wextra",
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
        "-gencode", f"arch=compute_{newest},code=compute_{newest}",
        "--keep", "--keep-dir", str(keep), "-c", str(KERNEL_SOURCE), "-o", str(tmp_path / "k.o"),
    ]  # fmt: skip
    done = _run(cmd)
    assert done.returncode == 0, f"nvcc failed:\n{done.stderr}"
    assert not _our_warnings(done.stdout + done.stderr), done.stderr
    for arch in ("80", "90"):
        cubins = list(keep.glob(f"*{arch}.cubin"))
        assert cubins, f"no sm_{arch} cubin among {sorted(p.name for p in keep.iterdir())}"
        assert cubins[0].read_bytes()[:4] == b"\x7fELF", f"sm_{arch} cubin is not an ELF image"
    ptx = [p for p in keep.glob("*.ptx") if f".target sm_{newest}" in p.read_text()]
    assert ptx, f"no compute_{newest} PTX among {sorted(p.name for p in keep.iterdir())}"
    assert "energyStatsKernel" in ptx[0].read_text()


def test_default_architectures_are_sass_plus_ptx_of_the_newest() -> None:
    """Every entry but the last is SASS only (-real); the last, the newest, also carries PTX
    (no suffix: real and virtual), which the driver JIT-compiles on newer GPUs."""
    archs = _default_architectures()
    assert all(a.endswith("-real") for a in archs[:-1]), archs
    assert archs[-1].isdigit(), f"the newest ({archs[-1]}) must carry PTX: no -real suffix"
    numbers = [int(a.removesuffix("-real")) for a in archs]
    assert numbers == sorted(numbers) and numbers[-1] >= 120, numbers


def test_gpu_image_builds_the_cmake_architectures() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    match = re.search(r'^ARG CCNET_CUDA_ARCHITECTURES="([^"]+)"', dockerfile, re.MULTILINE)
    assert match, "docker/Dockerfile.gpu must set ARG CCNET_CUDA_ARCHITECTURES"
    assert match.group(1).split(";") == _default_architectures()
    assert '-DCMAKE_CUDA_ARCHITECTURES="$CCNET_CUDA_ARCHITECTURES"' in dockerfile


def test_cmake_builds_sass_for_each_architecture_and_ptx_for_the_newest(
    nvcc: str, cmake: str, tmp_path: Path
) -> None:
    done = _run([cmake, "-S", str(TRT_DIR), "-B", str(tmp_path), "-DCCNET_KERNELS_ONLY=ON"])
    assert done.returncode == 0, done.stdout + done.stderr
    kernels = tmp_path / "crissCrossAttentionPlugin" / "CMakeFiles" / "ccnet_cca_kernels.dir"
    flags = (kernels / "flags.make").read_text()
    codes = {
        int(arch): sorted(code.split(","))
        for arch, code in re.findall(r"--generate-code=arch=compute_(\d+),code=\[([^\]]+)\]", flags)
    }
    numbers = [int(a.removesuffix("-real")) for a in _default_architectures()]
    assert sorted(codes) == numbers, flags
    newest = numbers[-1]
    assert codes.pop(newest) == [f"compute_{newest}", f"sm_{newest}"], flags
    assert all(code == [f"sm_{arch}"] for arch, code in codes.items()), flags


def test_kernel_api_header_compiles_as_plain_cpp(cxx: str, cuda_include: Path, tmp_path: Path):
    """The plugin and the PyTorch binding include the C API from host-only C++."""
    source = tmp_path / "api.cpp"
    source.write_text(
        '#include "crissCrossAttentionKernel.h"\n'
        "int main() { return static_cast<int>(ccnet::cca::Aggregation::kAuto); }\n"
    )
    cmd = [cxx, *CXX_FLAGS, "-fsyntax-only", "-isystem", str(cuda_include), "-I", str(PLUGIN_DIR)]
    done = _run([*cmd, str(source)])
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def cmake() -> str:
    path = shutil.which("cmake")
    if path is None:
        pytest.skip("cmake not found")
    return path


def test_cmake_builds_kernels_only_without_tensorrt(nvcc: str, cmake: str, tmp_path: Path) -> None:
    done = _run([cmake, "-S", str(TRT_DIR), "-B", str(tmp_path), "-DCCNET_KERNELS_ONLY=ON"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "building only the CUDA kernels" in done.stdout


def test_cmake_explains_missing_tensorrt(nvcc: str, cmake: str, tmp_path: Path) -> None:
    empty = tmp_path / "no-tensorrt"
    empty.mkdir()
    done = _run([cmake, "-S", str(TRT_DIR), "-B", str(tmp_path / "b"), f"-DTensorRT_ROOT={empty}"])
    if done.returncode == 0:
        pytest.skip("a system TensorRT was found, so its absence cannot be tested here")
    message = " ".join((done.stdout + done.stderr).split())
    assert "TensorRT headers (NvInferRuntime.h) not found" in message, message
    assert "-DCCNET_KERNELS_ONLY=ON" in message and "TensorRT_ROOT" in message


# ------------------------------------------------------------------------------------------
# (b) the kernels' math on the CPU
# ------------------------------------------------------------------------------------------


class HostMath:
    """ctypes front end of crissCrossAttentionHostCheck.cpp."""

    def __init__(self, library: Path) -> None:
        self.lib = ctypes.CDLL(str(library))
        self.lib.ccaHostWorkspaceLayout.restype = ctypes.c_size_t
        self.lib.ccaHostPaddedKeys.restype = ctypes.c_int

    def layout(self, batch: int, extent: tuple[int, ...], element_size: int) -> tuple[int, list]:
        offsets = (ctypes.c_size_t * (len(extent) + 1))()
        ext = (ctypes.c_int * len(extent))(*extent)
        total = self.lib.ccaHostWorkspaceLayout(batch, len(extent), ext, element_size, offsets)
        return int(total), list(offsets)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_tile: int = 64
    ) -> tuple[torch.Tensor, np.ndarray, int]:
        """Output, the workspace after the call, the return code."""
        extent = tuple(q.shape[2:])
        element_size = q.element_size()
        total, _ = self.layout(q.shape[0], extent, element_size)
        workspace = np.full(max(total, 1), 0xAB, dtype=np.uint8)  # garbage: all must be rewritten
        out = torch.full_like(v, float("nan"))
        fn = self.lib.ccaHostForwardF64 if q.dtype == torch.float64 else self.lib.ccaHostForwardF32
        q, k, v = (t.contiguous() for t in (q, k, v))
        rc = fn(
            ctypes.c_void_p(q.data_ptr()), ctypes.c_void_p(k.data_ptr()),
            ctypes.c_void_p(v.data_ptr()), ctypes.c_void_p(out.data_ptr()),
            q.shape[0], q.shape[1], v.shape[1], len(extent),
            (ctypes.c_int * len(extent))(*extent),
            workspace.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(total), key_tile,
        )  # fmt: skip
        return out, workspace[:total], rc


@pytest.fixture(scope="module")
def host_math(cxx: str, tmp_path_factory: pytest.TempPathFactory) -> HostMath:
    library = tmp_path_factory.mktemp("host_math") / "libccahost.so"
    source = PLUGIN_DIR / "crissCrossAttentionHostCheck.cpp"
    cmd = [cxx, *CXX_FLAGS, "-Wpedantic", "-O2", "-shared", "-fPIC", str(source)]
    done = _run([*cmd, "-o", str(library)])
    assert done.returncode == 0, f"host harness failed to build:\n{done.stderr}"
    return HostMath(library)


def _qkv(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0, scale: float = 1.0):
    B, Cq, C, *spatial = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Cq, *spatial, generator=gen, dtype=torch.float64) * scale
    k = torch.randn(B, Cq, *spatial, generator=gen, dtype=torch.float64) * scale
    v = torch.randn(B, C, *spatial, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


SHAPES = [  # (B, Cq, C, *spatial): odd sizes, size-1 axes, B > 1, one axis longer than a tile
    (2, 3, 5, 4, 6),
    (1, 4, 3, 7, 9),
    (3, 2, 4, 1, 5),
    (1, 2, 3, 6, 1),
    (2, 1, 2, 1, 1),
    (1, 5, 4, 3, 70),
    (2, 3, 4, 3, 4, 5),
    (1, 2, 3, 5, 1, 4),
    (1, 2, 2, 4, 1, 1),
    (2, 1, 3, 1, 3, 2),
    (1, 3, 2, 2, 17, 3),
]


@pytest.mark.parametrize("key_tile", [64, 3], ids=["tile64", "tile3"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_math_matches_reference(
    host_math: HostMath, shape: tuple[int, ...], dtype: torch.dtype, key_tile: int
) -> None:
    q, k, v = _qkv(shape, dtype, scale=1.5)
    out, _, rc = host_math.forward(q, k, v, key_tile)
    assert rc == 0, f"harness returned {rc} for {shape}"
    err = _relative_error(out, axial_attention_reference(q, k, v))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert err <= tol, f"{shape} {dtype} key tile {key_tile}: relative error {err:.2e} > {tol}"


def _softmax_row(q: torch.Tensor, k: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """Joint softmax of pixel (h, w), written from the definition: column keys i != h first,
    then the whole row (the pixel itself once)."""
    H = q.shape[2]
    query = q[b, :, h, w]
    column = [i for i in range(H) if i != h]
    energies = torch.cat([query @ k[b, :, column, w], query @ k[b, :, h, :]])
    return torch.softmax(energies, dim=0)


def test_workspace_holds_one_joint_softmax_per_pixel(host_math: HostMath) -> None:
    """Decodes the workspace as the README documents it (per-axis numerators, keyStride-padded
    rows, per-(pixel, axis) statistics) and checks every pixel's probabilities against the
    definition, the self mask and the zero padding."""
    B, Cq, C, H, W = 2, 3, 2, 5, 7
    q, k, v = _qkv((B, Cq, C, H, W), torch.float64)
    _, workspace, rc = host_math.forward(q, k, v)
    assert rc == 0
    total, offsets = host_math.layout(B, (H, W), 8)
    stride_h, stride_w = (host_math.lib.ccaHostPaddedKeys(n) for n in (H, W))
    col = np.frombuffer(workspace, np.float64, B * W * H * stride_h, offsets[0])
    row = np.frombuffer(workspace, np.float64, B * H * W * stride_w, offsets[1])
    stats = np.frombuffer(workspace, np.float64, B * H * W * 2 * 2, offsets[2])
    col = col.reshape(B, W, H, stride_h)  # line (b, w), position h, key i
    row = row.reshape(B, H, W, stride_w)  # line (b, h), position w, key j
    stats = stats.reshape(B, H, W, 2, 2)  # (max, sum) per axis
    assert total >= offsets[2] + stats.nbytes
    for b in range(B):
        for h in range(H):
            for w in range(W):
                (m_h, s_h), (m_w, s_w) = stats[b, h, w]
                peak = max(m_h, m_w)
                norm = s_h * np.exp(m_h - peak) + s_w * np.exp(m_w - peak)
                p_col = col[b, w, h] * np.exp(m_h - peak) / norm
                p_row = row[b, h, w] * np.exp(m_w - peak) / norm
                assert p_col[h] == 0.0, "the pixel must be masked on its column"
                assert not p_col[H:].any() and not p_row[W:].any(), "padding must be zero"
                ours = np.concatenate([np.delete(p_col[:H], h), p_row[:W]])
                expected = _softmax_row(q, k, b, h, w).numpy()
                np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("extent", [(129, 257), (97, 97), (8, 65, 129), (1, 1)], ids=str)
def test_workspace_is_the_attention_map_plus_padding(
    host_math: HostMath, extent: tuple[int, ...]
) -> None:
    """B x prod(extent) x (sum of lengths) attention map, each row padded to 16 keys, and small
    statistics: linear in the pixels, never the (HW) x (HW) matrix."""
    batch, element_size = 2, 4
    pixels = batch * int(np.prod(extent))
    attention = pixels * (sum(extent) - len(extent) + 1) * element_size
    padded = pixels * sum(host_math.lib.ccaHostPaddedKeys(n) for n in extent) * element_size
    total, _ = host_math.layout(batch, extent, element_size)
    stats = pixels * len(extent) * 2 * element_size
    assert padded <= total <= padded + stats + 256 * (len(extent) + 1)
    if min(extent) >= 64:
        assert total <= 1.25 * attention, f"{total} B vs attention map {attention} B"
    assert total < pixels * int(np.prod(extent)) * element_size or pixels <= 2


def test_harness_refuses_a_short_workspace(host_math: HostMath) -> None:
    q, k, v = _qkv((1, 2, 2, 3, 4), torch.float32)
    total, _ = host_math.layout(1, (3, 4), 4)
    ext = (ctypes.c_int * 2)(3, 4)
    short = np.zeros(total, np.uint8)
    out = torch.empty_like(v)
    rc = host_math.lib.ccaHostForwardF32(
        ctypes.c_void_p(q.data_ptr()), ctypes.c_void_p(k.data_ptr()),
        ctypes.c_void_p(v.data_ptr()), ctypes.c_void_p(out.data_ptr()), 1, 2, 2, 2, ext,
        short.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(total - 1), 64,
    )  # fmt: skip
    assert rc == 2


# ------------------------------------------------------------------------------------------
# (c) the TensorRT plugin against TensorRT's headers
# ------------------------------------------------------------------------------------------

PLUGIN_UNITS = [
    TRT_DIR / "ccnetPluginLibrary.cpp",
    TRT_DIR / "common" / "pluginLogging.cpp",
    PLUGIN_DIR / "crissCrossAttentionPlugin.cpp",
    TRT_DIR / "tools" / "pluginLoadCheck.cpp",
]


@pytest.fixture(scope="module")
def tensorrt_include() -> Path:
    value = os.environ.get("TENSORRT_INCLUDE_DIR")
    if not value:
        pytest.skip(
            "TENSORRT_INCLUDE_DIR is not set: the TensorRT plugin is not compile-checked here "
            "(point it at a folder holding NvInferRuntime.h, e.g. the include/ folder of "
            "github.com/NVIDIA/TensorRT)"
        )
    include = Path(value)
    if not (include / "NvInferRuntime.h").is_file():
        pytest.fail(f"TENSORRT_INCLUDE_DIR={include} holds no NvInferRuntime.h")
    return include


def _plugin_flags(tensorrt_include: Path, cuda_include: Path) -> list[str]:
    # TensorRT's own headers carry deprecation warnings: include them as system headers.
    return ["-isystem", str(tensorrt_include), "-isystem", str(cuda_include), "-I", str(TRT_DIR)]


@pytest.mark.parametrize("unit", PLUGIN_UNITS, ids=lambda p: p.name)
def test_plugin_sources_compile_against_tensorrt(
    cxx: str, cuda_include: Path, tensorrt_include: Path, unit: Path
) -> None:
    flags = _plugin_flags(tensorrt_include, cuda_include)
    done = _run([cxx, *CXX_FLAGS, "-fsyntax-only", *flags, str(unit)])
    assert done.returncode == 0, done.stderr


def test_plugin_library_loads_and_passes_interface_checks(
    nvcc: str, cxx: str, cuda_include: Path, tensorrt_include: Path, tmp_path: Path
) -> None:
    """Build libccnet_trt_plugin.so (kernels for sm_80 only, to stay quick) and load it with
    ccnet_plugin_check, the way TensorRT loads plugin libraries."""
    flags = _plugin_flags(tensorrt_include, cuda_include)
    library = native_build.build_plugin(tmp_path, tensorrt_include)
    checker = tmp_path / "ccnet_plugin_check"
    tool = [nvcc, "-std=c++17", "-O1", *flags, str(PLUGIN_UNITS[3]), "-o", str(checker), "-ldl"]
    done = _run(tool)
    assert done.returncode == 0, done.stderr
    done = _run([str(checker), str(library)], timeout=120)
    assert done.returncode == 0 and "PASSED" in done.stdout, done.stdout + done.stderr


def test_plugin_links_the_cuda_runtime_statically(
    nvcc: str, cmake: str, tensorrt_include: Path, tmp_path: Path
) -> None:
    """So the library loads beside a TensorRT built for another CUDA major version."""
    include = f"-DTensorRT_INCLUDE_DIR={tensorrt_include}"
    done = _run([cmake, "-S", str(TRT_DIR), "-B", str(tmp_path), include])
    assert done.returncode == 0, done.stdout + done.stderr
    link = (tmp_path / "CMakeFiles" / "ccnet_trt_plugin.dir" / "link.txt").read_text()
    assert "cudart_static" in link, link
    assert "libcudart.so" not in link and not re.search(r"-lcudart\b(?!_static)", link), link


# ------------------------------------------------------------------------------------------
# (d) the PyTorch extension on a GPU
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_ext():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the extension is checked on GPU machines only")
    from ccnet.export import cuda_ext

    try:
        cuda_ext.load_extension()
    except cuda_ext.CudaKernelsUnavailableError as exc:
        pytest.fail(f"a CUDA device is visible but the extension is unusable: {exc}")
    return cuda_ext


GPU_SHAPES = [
    (2, 8, 16, 13, 21),
    (1, 64, 96, 33, 65),
    (3, 4, 40, 1, 9),
    (1, 5, 7, 17, 1),
    (1, 16, 24, 9, 300),
    (2, 8, 16, 3, 7, 11),
    (1, 16, 40, 4, 33, 17),
    (1, 4, 8, 5, 1, 1),
]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3}


def _extension_op(cuda_ext, shape: tuple[int, ...]):
    if len(shape) == 6:
        return cuda_ext.criss_cross_attention_3d_cuda
    return cuda_ext.criss_cross_attention_cuda


@pytest.mark.gpu
@pytest.mark.parametrize("aggregation", ["auto", "simt", "tensor_core"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_extension_matches_reference(cuda_ext, shape, dtype, aggregation) -> None:
    if aggregation == "tensor_core" and dtype == torch.float32:
        pytest.skip("fp32 always aggregates on CUDA cores")
    q, k, v = (t.cuda() for t in _qkv(shape, dtype, seed=3))
    op = _extension_op(cuda_ext, shape)
    with torch.no_grad():
        out = op(q, k, v, aggregation=aggregation)
        # The reference in float64 on the very inputs the kernel saw (already rounded to dtype).
        ref = axial_attention_reference(q.double(), k.double(), v.double())
    assert out.dtype == dtype and out.shape == v.shape and torch.isfinite(out).all()
    err = _relative_error(out, ref)
    assert err <= TOLERANCE[dtype], f"{shape} {dtype} {aggregation}: relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_extension_tf32_stays_within_its_documented_error(cuda_ext, shape) -> None:
    """The opt-in TF32 aggregation of fp32: about 1e-3 of the largest output (values and
    probabilities rounded to 10 mantissa bits), never the 1e-5 of the default path."""
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("TF32 tensor cores need sm_80 or newer")
    q, k, v = (t.cuda() for t in _qkv(shape, torch.float32, seed=3))
    with torch.no_grad():
        out = _extension_op(cuda_ext, shape)(q, k, v, aggregation="tf32")
        ref = axial_attention_reference(q.double(), k.double(), v.double())
    assert torch.isfinite(out).all()
    err = _relative_error(out, ref)
    assert err <= 2e-3, f"{shape} tf32: relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 8, 16, 6, 700), (1, 4, 8, 3, 9, 600)], ids=str)
def test_extension_recomputed_energies_match(cuda_ext, shape, dtype) -> None:
    """Rows too long for shared memory are handled by recomputing the energies; forcing that
    path must give the same result as keeping rows in shared memory."""
    q, k, v = (t.cuda() for t in _qkv(shape, dtype, seed=5))
    op = _extension_op(cuda_ext, shape)
    with torch.no_grad():
        kept = op(q, k, v)
        recomputed = op(q, k, v, recompute_energies=True)
        ref = axial_attention_reference(q.double(), k.double(), v.double())
    assert _relative_error(recomputed, ref) <= TOLERANCE[dtype]
    assert _relative_error(recomputed, kept.double()) <= TOLERANCE[dtype]


@pytest.mark.gpu
def test_extension_contract(cuda_ext) -> None:
    q, k, v = (t.cuda() for t in _qkv((2, 4, 6, 5, 7), torch.float32))
    # Non-contiguous views are accepted (made dense), empty batches give empty outputs.
    out = cuda_ext.criss_cross_attention_cuda(q.transpose(2, 3).contiguous().transpose(2, 3), k, v)
    assert _relative_error(out, axial_attention_reference(q, k, v)) <= 1e-5
    empty = cuda_ext.criss_cross_attention_cuda(q[:0], k[:0], v[:0])
    assert empty.shape == (0, 6, 5, 7)
    with pytest.raises(TypeError, match="float32 or float16"):
        cuda_ext.criss_cross_attention_cuda(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="same shape"):
        cuda_ext.criss_cross_attention_cuda(q, k[:, :, :4], v)
    with pytest.raises(RuntimeError, match="forward-only"):
        cuda_ext.criss_cross_attention_cuda(q.requires_grad_(), k, v)
    assert cuda_ext.has_cuda_kernels()
