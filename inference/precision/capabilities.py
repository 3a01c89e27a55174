"""What this CPU can do fast: the instruction sets that decide which precisions are offered.

Reduced precision only pays where the hardware has dot-product instructions for it:
bf16 needs AVX512-BF16 (Zen 4, Cooper Lake and later Xeons) or AMX-BF16 (Sapphire Rapids and
later); int8 needs VNNI (AVX512-VNNI, AVX-VNNI or AMX-INT8). Without them PyTorch and ONNX
Runtime emulate the narrow types and are slower than float32, so the path is not offered.

The flags come from ``/proc/cpuinfo`` (what the kernel lets this process use), cross-checked
with PyTorch's own probes where it has them, so a container that masks AMX sees no AMX.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["CpuCapabilities", "detect_cpu", "parse_cpuinfo"]

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuCapabilities:
    """The CPU features that matter for inference precision.

    Attributes:
        model: the CPU's model name (``lscpu``'s).
        isa: PyTorch's dispatch level (``torch.backends.cpu.get_cpu_capability()``).
        amx_bf16, amx_int8: Advanced Matrix Extensions tiles (Intel Xeon 4th gen and later).
        avx512_bf16: bf16 dot products in AVX-512 (AMD Zen 4, Intel Cooper Lake and later).
        avx512_vnni, avx_vnni: int8 dot products in AVX-512 / AVX2 registers.
    """

    model: str
    isa: str
    amx_bf16: bool = False
    amx_int8: bool = False
    avx512_bf16: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix products run in hardware (not emulated through float32)."""
        return self.amx_bf16 or self.avx512_bf16

    @property
    def native_int8(self) -> bool:
        """int8 dot products with 32-bit accumulation run in one instruction."""
        return self.amx_int8 or self.avx512_vnni or self.avx_vnni

    @property
    def flags(self) -> list[str]:
        """The features present, by their ``/proc/cpuinfo`` names."""
        names = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni")
        return [name for name in names if getattr(self, name)]

    def key(self) -> str:
        """A short stable id of the CPU and the runtimes' versions, for caches of measured
        figures: a gate passed on one machine or library build says nothing about another."""
        runtimes = _runtime_versions()
        text = json.dumps({**asdict(self), **runtimes}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> dict[str, object]:
        """For /v1/models, the startup log and /metrics."""
        return {
            "model": self.model,
            "isa": self.isa,
            "amx": self.amx_bf16 or self.amx_int8,
            "avx512_bf16": self.avx512_bf16,
            "vnni": self.avx512_vnni or self.avx_vnni or self.amx_int8,
            "flags": self.flags,
        }


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, flags) of the first processor in ``/proc/cpuinfo`` text."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if model and flags:
            break
    return model, flags


def capabilities_from(model: str, flags: set[str], isa: str) -> CpuCapabilities:
    """The capabilities a set of ``/proc/cpuinfo`` flags declares."""
    return CpuCapabilities(
        model=model or platform.processor() or platform.machine(),
        isa=isa,
        amx_bf16="amx_bf16" in flags and "amx_tile" in flags,
        amx_int8="amx_int8" in flags and "amx_tile" in flags,
        avx512_bf16="avx512_bf16" in flags,
        avx512_vnni="avx512_vnni" in flags,
        avx_vnni="avx_vnni" in flags,
    )


@functools.cache
def detect_cpu() -> CpuCapabilities:
    """This machine's capabilities (probed once per process)."""
    import torch

    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: rely on PyTorch's probes alone
        text = ""
    model, flags = parse_cpuinfo(text)
    if not text:
        flags = set()
        if _probe(torch, "_is_avx512_bf16_supported"):
            flags.add("avx512_bf16")
        if _probe(torch, "_is_amx_tile_supported"):
            flags |= {"amx_tile", "amx_bf16", "amx_int8"}
        if _probe(torch, "_is_vnni_supported"):
            flags.add("avx512_vnni")
    elif not _probe(torch, "_is_amx_tile_supported", default=True):
        # the kernel lists AMX but the process may not use its tiles (no XFD permission)
        flags -= {"amx_tile", "amx_bf16", "amx_int8"}
    return capabilities_from(model, flags, torch.backends.cpu.get_cpu_capability())


def _probe(torch: object, name: str, default: bool = False) -> bool:
    probe = getattr(getattr(torch, "cpu", None), name, None)
    if probe is None:
        return default
    try:
        return bool(probe())
    except Exception:  # a private probe that changed: trust /proc/cpuinfo instead
        return default


def _runtime_versions() -> dict[str, str]:
    import torch

    versions = {"torch": torch.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions
