"""Does ONNX Runtime's CPU U8S8 integer GEMM saturate on this machine?

ONNX Runtime's CPU kernels (MLAS) pick their integer GEMM/convolution kernel from the
CPU's features at start-up (``onnxruntime/core/mlas/lib/platform.cpp``). For a uint8
activation times an int8 weight (U8S8) on x86-64:

* AVX2 (``MlasGemmU8S8KernelAvx2``) and AVX512BW without VNNI
  (``MlasGemmU8S8KernelAvx512Core``) multiply with ``VPMADDUBSW``, which adds the two
  u8*s8 products of a pair into a *saturating* int16: 255*127*2 = 64770 > 32767, so
  large activations times large same-sign weights are clipped;
* AVX-VNNI (``MlasGemmU8S8KernelAvxVnni``, unless AVX512BW replaces it) and
  AVX512-VNNI (``MlasGemmU8S8KernelAvx512Vnni``) use ``VPDPBUSD``, which accumulates
  into int32: exact; AMX machines all have AVX512-VNNI.

ONNX Runtime's quantization guide (docs/performance/model-optimizations/quantization,
"When and why do I need to try U8U8?") says the same of VPMADDUBSW on AVX2/AVX512 and
advises U8U8, which does not saturate, or 7-bit weights (reduce_range). On ARM64 the
U8S8 kernels (NEON widening multiplies, UDOT) are exact. x86 CPUs without AVX2 get SSE
kernels, not checked here: counted as saturating, like any CPU whose features cannot be
read. Measured with onnxruntime 1.32 on an AMD EPYC (AVX2, no VNNI): a fused U8S8
QLinearConv/QLinearMatMul/QGemm was 20 to 52 output steps off the unfused graph, U8U8 exact.
"""

from __future__ import annotations

import platform
from pathlib import Path

_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
_ARM = {"aarch64", "arm64", "armv8l", "armv8b"}


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (Linux), or None where it cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def u8s8_is_exact(machine: str | None = None, flags: set[str] | None = None) -> bool:
    """True when ORT's CPU U8S8 kernels cannot saturate here; False when they can, or when that is unknown.

    ``machine`` (``platform.machine()``) and ``flags`` (:func:`cpu_flags`) default to this
    machine's; passing them makes the decision testable.
    """
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch in _ARM:
        return True
    if arch not in _X86:
        return False  # unknown architecture: be conservative
    if flags is None:
        flags = cpu_flags()
    if flags is None:
        return False  # x86 without a readable /proc/cpuinfo (Windows, macOS): be conservative
    if "avx512_vnni" in flags:
        return True
    # AVX-VNNI's kernel is installed first, then replaced by the (saturating) AVX512BW one.
    return "avx_vnni" in flags and "avx512bw" not in flags
