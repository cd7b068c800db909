"""Which int8 kernels ONNX Runtime's CPU EP uses on this host, and whether U8S8 can saturate there.

On x86 without VNNI, ORT's U8S8 int8 Conv/MatMul kernels multiply with ``vpmaddubsw``, which adds two u8 x s8
products into an int16 and saturates: 255 * 127 * 2 = 64770 > 32767. The fused int8 graph then deviates from the QDQ
semantics (the unfused DequantizeLinear -> float Conv reference). With 7-bit weights (ORT's ``reduce_range``,
weights in [-64, 64]) the pair sum is at most 255 * 64 * 2 = 32640 and fits. AVX-512 VNNI / AVX-VNNI (``vpdpbusd``
accumulates into int32) and ARM (SDOT/UDOT, or widening NEON multiplies) do not saturate.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

# /proc/cpuinfo flags that give ORT an int32-accumulating u8 x s8 dot product (no int16 intermediate).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def host_isa(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, object]:
    """The host's ISA facts that decide int8 kernel behaviour.

    Returns:
        ``{"machine", "x86", "avx2", "vnni", "u8s8_saturates"}``; ``u8s8_saturates`` is True on x86 without any
        VNNI flag (the ``vpmaddubsw`` path).
    """
    machine = platform.machine().lower()
    x86 = machine in ("x86_64", "amd64", "i386", "i686")
    try:
        flags = set(Path(cpuinfo).read_text(errors="replace").split())
    except OSError:
        flags = set()
    vnni = any(f in flags for f in VNNI_FLAGS)
    return {"machine": machine, "x86": x86, "avx2": "avx2" in flags, "vnni": vnni,
            "u8s8_saturates": bool(x86 and not vnni)}


def resolve_reduce_range(setting: str, weight_type: str = "int8", isa: dict[str, object] | None = None,
                         target: Any = None) -> bool:
    """``quantize.reduce_range`` ("auto" | "true" | "false") as a bool for ORT's quantizer.

    "auto" is true exactly when the int8 graph will run on a host whose U8S8 kernel saturates (x86 without VNNI)
    and weights are int8; uint8 weights (U8U8) and VNNI/ARM hosts keep the full 8-bit range. With a benchmark
    ``target`` (``benchmarks.targets.Target``) that is not measured here (the ARM mobile/board targets), the model
    runs on ARM, where nothing saturates, so "auto" keeps full range; without one, the host decides.
    """
    s = str(setting).lower()
    if s in ("true", "false"):
        return s == "true"
    if target is not None and not getattr(target, "measured_here", True):
        return False
    isa = host_isa() if isa is None else isa
    return bool(isa["u8s8_saturates"]) and weight_type == "int8"
