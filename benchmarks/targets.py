"""The one registry of benchmark targets (``TARGETS``, looked up by :func:`get_target`): ONNX Runtime session
settings plus a device profile (peak MAC/s, bandwidth, on-chip memory, energies). The factorizer's per-layer latency
model (:mod:`pipeline.factorize.latency`) reads the same registry.

Only the CPU EP exists on the development machines. The ``mobile-*`` targets therefore time the ``.ort`` model with
mobile session settings *on this CPU* as a proxy (labelled as such in ``note``); their device profiles feed the
roofline and energy estimates, which are models, not measurements. Every profile states its sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import ConfigError
from pipeline.ort_session import EXEC_MODES, OPT_LEVELS, make_session
from pipeline.registry import Registry

# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm / 0.9 V (docs/methods.md).
# Absolute values are dated; the proxy relies on their ratios.
HOROWITZ_45NM_PJ: Mapping[str, float] = {
    "int8_add": 0.03,
    "int8_mult": 0.2,
    "int32_add": 0.1,
    "int32_mult": 3.1,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "sram_read_32bit": 5.0,
    "dram_read_32bit": 640.0,
}
HOROWITZ_SOURCE = "M. Horowitz, 'Computing's energy problem', ISSCC 2014 (45 nm, 0.9 V); as used by Han et al. (Deep Compression, EIE)"


@dataclass(frozen=True)
class DeviceProfile:
    """Roofline and energy parameters of one device (one core unless stated).

    Attributes:
        name: short identifier.
        peak_macs_fp32: peak fp32 multiply-accumulates per second.
        peak_macs_int8: peak int8 multiply-accumulates per second.
        mem_bandwidth: sustainable DRAM bandwidth in bytes/s available to the timed core(s).
        onchip_bytes: cache/SRAM capacity a layer's working set may occupy before spilling to DRAM.
        energies_pj: per-operation energies (keys as in ``HOROWITZ_45NM_PJ``).
        source: where the numbers come from and how they were derived.
        channel_block: channel multiple the device's kernels are fastest at (ranks are rounded to it).
    """

    name: str
    peak_macs_fp32: float
    peak_macs_int8: float
    mem_bandwidth: float
    onchip_bytes: int
    source: str
    energies_pj: Mapping[str, float] = field(default_factory=lambda: dict(HOROWITZ_45NM_PJ))
    energy_source: str = HOROWITZ_SOURCE
    # Channel block the device's conv kernels work in: ORT's NCHWc layout uses 8 channels on AVX2 and 16 on AVX-512;
    # NPUs favour 16. ``factorize.align = 0`` rounds ranks to this.
    channel_block: int = 8

    def peak_macs(self, precision: str) -> float:
        """Peak MAC/s for ``"fp32"`` or ``"int8"``."""
        if precision == "int8":
            return self.peak_macs_int8
        if precision == "fp32":
            return self.peak_macs_fp32
        raise ConfigError(f"unknown precision {precision!r}; known: fp32, int8")

    def peak_macs_per_s(self, precision: str) -> float:
        """Alias of ``peak_macs`` (the name used in the benchmark contract)."""
        return self.peak_macs(precision)

    @property
    def mem_bandwidth_bytes_per_s(self) -> float:
        """Alias of ``mem_bandwidth`` in bytes/s (the name used in the benchmark contract)."""
        return self.mem_bandwidth

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view for reports."""
        return {
            "name": self.name,
            "peak_macs_fp32": self.peak_macs_fp32,
            "peak_macs_int8": self.peak_macs_int8,
            "mem_bandwidth": self.mem_bandwidth,
            "onchip_bytes": self.onchip_bytes,
            "energies_pj": dict(self.energies_pj),
            "source": self.source,
            "energy_source": self.energy_source,
            "channel_block": self.channel_block,
        }


PROFILES: Registry[DeviceProfile] = Registry("device profile")

# AMD EPYC (Zen 2/3), one core, AVX2 + FMA, no AVX-512/VNNI: 2 x 256-bit FMA pipes = 16 fp32 MAC/cycle at ~2.5 GHz.
# int8 without VNNI goes through vpmaddubsw + vpmaddwd: about 2x the fp32 rate in the best case (docs/benchmarking.md
# measures 0.7-1.07x in practice, the peak is what a roofline wants). One core sustains ~20 GB/s; on-chip = 512 KiB
# L2 plus a fair share of a shared L3 on a multi-tenant host.
PROFILES.add("epyc-avx2-core", DeviceProfile(
    name="epyc-avx2-core",
    peak_macs_fp32=16 * 2.5e9,
    peak_macs_int8=32 * 2.5e9,
    mem_bandwidth=20e9,
    onchip_bytes=4 * 2**20,
    source="AMD Software Optimization Guide for family 17h/19h (2x256-bit FMA per core); ~2.5 GHz; "
           "bandwidth/L3 share estimated for one core of a shared server",
))
# x86 core with full-width AVX-512 (e.g. AMD EPYC Zen 5 "Turin", family 0x1A, or Intel server cores): 2 x 512-bit
# FMA pipes = 32 fp32 MAC/cycle; AVX-512 VNNI vpdpbusd does 64 int8 MAC per instruction on 2 pipes = 128/cycle.
# ~3.0 GHz sustained under load. Check: resnet18_cifar at 32x32 (554 M MACs) measured 6.33 ms at 1 thread here,
# i.e. 88 G MAC/s, above the AVX2 profile's 40 G peak, so the AVX2 profile's "lower bound" was not one on this host.
PROFILES.add("x86-avx512-core", DeviceProfile(
    name="x86-avx512-core",
    peak_macs_fp32=32 * 3.0e9,
    peak_macs_int8=128 * 3.0e9,
    mem_bandwidth=20e9,
    onchip_bytes=4 * 2**20,
    source="AMD Zen 5 / Intel AVX-512 optimization guides (2x512-bit FMA, VNNI); ~3.0 GHz; bandwidth/L3 share "
           "estimated for one core of a shared server; chosen when /proc/cpuinfo lists avx512f",
    # measured (make bench factorize, ResNet-18 224): x16 ranks realise 0.95-0.96 of the MAC reduction, x8 0.82-0.93
    channel_block=16,
))


def host_profile() -> DeviceProfile:
    """The device profile of the machine this runs on: AVX-512 when the CPU reports ``avx512f``, else AVX2.

    Development and CI machines of one class differ in CPU generation; a roofline from the wrong ISA is not a
    lower bound, so the ``cpu`` target reads the flags instead of assuming one.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return PROFILES.get("epyc-avx2-core")
    return PROFILES.get("x86-avx512-core" if " avx512f" in flags else "epyc-avx2-core")


# Phone big core, Cortex-A78 class at ~2.8 GHz: 2 x 128-bit NEON FMA pipes = 8 fp32 MAC/cycle; SDOT (Armv8.2
# dot product) 2 x 16 int8 MAC/cycle. LPDDR5 phone, one core ~15 GB/s; 512 KiB L2 + 4 MiB shared L3.
PROFILES.add("cortex-a78-core", DeviceProfile(
    name="cortex-a78-core",
    peak_macs_fp32=8 * 2.8e9,
    peak_macs_int8=32 * 2.8e9,
    mem_bandwidth=15e9,
    onchip_bytes=int(4.5 * 2**20),
    source="Arm Cortex-A78 Software Optimization Guide (2x128-bit ASIMD FMA, SDOT); 2.8 GHz phone big core; "
           "LPDDR5 single-core bandwidth estimated",
))
# Single-board computer, Cortex-A53 at 1.2 GHz (Raspberry Pi 3 class): in-order, 64-bit NEON datapath = 2 fp32
# MAC/cycle; Armv8.0 has no SDOT, SMLAL-based int8 ~4 MAC/cycle. LPDDR2 ~2.5 GB/s; 512 KiB shared L2.
PROFILES.add("cortex-a53-board", DeviceProfile(
    name="cortex-a53-board",
    peak_macs_fp32=2 * 1.2e9,
    peak_macs_int8=4 * 1.2e9,
    mem_bandwidth=2.5e9,
    onchip_bytes=512 * 2**10,
    source="Arm Cortex-A53 TRM (dual-issue in-order, 64-bit NEON); 1.2 GHz Raspberry Pi 3 class board; "
           "LPDDR2 bandwidth estimated",
))
# Apple A14-class performance core (~3.0 GHz): 4 x 128-bit NEON FMA pipes = 16 fp32 MAC/cycle, SDOT 4 x 16 int8
# MAC/cycle; ~30 GB/s for one core; 8 MiB shared L2 (a fair 4 MiB share).
PROFILES.add("apple-a14-core", DeviceProfile(
    name="apple-a14-core",
    peak_macs_fp32=16 * 3.0e9,
    peak_macs_int8=64 * 3.0e9,
    mem_bandwidth=30e9,
    onchip_bytes=4 * 2**20,
    source="public microbenchmarks of Apple Firestorm cores (4 FP/SIMD pipes); ~3.0 GHz; bandwidth/L2 share estimated",
))

_OPT_LEVELS = tuple(OPT_LEVELS)
_EXEC_MODES = tuple(EXEC_MODES)


@dataclass(frozen=True)
class Target:
    """Where and how a model is timed.

    Attributes:
        name: registry name.
        providers: ONNX Runtime execution providers, in priority order, used for timing here.
        intra_threads: default ``intra_op_num_threads`` (1: compute runs in the calling thread, so
            ``time.thread_time`` excludes preemption by other tenants).
        inter_threads: ``inter_op_num_threads``.
        graph_opt_level: ``"all" | "extended" | "basic" | "disabled"``.
        execution_mode: ``"sequential" | "parallel"``.
        model_format: ``"onnx"`` or ``"ort"`` (the latency harness converts ``.onnx`` inputs to ``.ort``).
        profile: device profile for roofline and energy estimates.
        note: what the numbers mean (proxy or real).
        device_providers: the EPs the model would use on the real device (informational).
        session_config: extra ``SessionOptions.add_session_config_entry`` pairs.
        measured_here: timing on this machine's ORT CPU EP *is* this target's latency (only ``cpu``); the others
            are proxies, so the per-layer latency model of the factorizer refuses them.
    """

    name: str
    providers: tuple[str, ...]
    intra_threads: int
    inter_threads: int
    graph_opt_level: str
    execution_mode: str
    model_format: str
    profile: DeviceProfile
    note: str
    device_providers: tuple[str, ...] = ()
    session_config: tuple[tuple[str, str], ...] = ()
    measured_here: bool = False

    def __post_init__(self) -> None:
        if self.graph_opt_level not in _OPT_LEVELS:
            raise ConfigError(f"target {self.name}: graph_opt_level {self.graph_opt_level!r} not in {_OPT_LEVELS}")
        if self.execution_mode not in _EXEC_MODES:
            raise ConfigError(f"target {self.name}: execution_mode {self.execution_mode!r} not in {_EXEC_MODES}")
        if self.model_format not in ("onnx", "ort"):
            raise ConfigError(f"target {self.name}: model_format {self.model_format!r} not in ('onnx', 'ort')")
        if self.intra_threads < 1 or self.inter_threads < 1:
            raise ConfigError(f"target {self.name}: thread counts must be >= 1")

    def settings(self, threads: int | None = None) -> dict[str, Any]:
        """Session settings to state in a report (docs/benchmarking.md: threads, execution mode, optimization level)."""
        return {
            "target": self.name,
            "providers": list(self.providers),
            "intra_threads": threads if threads is not None else self.intra_threads,
            "inter_threads": self.inter_threads,
            "graph_opt_level": self.graph_opt_level,
            "execution_mode": self.execution_mode,
            "model_format": self.model_format,
            "profile": self.profile.name,
            "note": self.note,
        }


TARGETS: Registry[Target] = Registry("target")

_CPU = ("CPUExecutionProvider",)
_PROXY = "timed with the ORT CPU EP on this x86 machine as a PROXY for the device; absolute times are not the device's"

TARGETS.add("cpu", Target(
    name="cpu", providers=_CPU, intra_threads=1, inter_threads=1, graph_opt_level="all", execution_mode="sequential",
    model_format="onnx", profile=host_profile(),
    note=f"this machine: ORT CPU EP, profile {host_profile().name} (from /proc/cpuinfo); measured",
    measured_here=True,
))
TARGETS.add("mobile-arm", Target(
    name="mobile-arm", providers=_CPU, intra_threads=1, inter_threads=1, graph_opt_level="all",
    execution_mode="sequential", model_format="ort", profile=PROFILES.get("cortex-a78-core"),
    note=f"ORT Mobile CPU EP (.ort, Fixed optimizations, no NCHWc); {_PROXY}; roofline/energy: Cortex-A78-class core",
    device_providers=_CPU,
))
TARGETS.add("mobile-nnapi", Target(
    name="mobile-nnapi", providers=_CPU, intra_threads=1, inter_threads=1, graph_opt_level="basic",
    execution_mode="sequential", model_format="ort", profile=PROFILES.get("cortex-a78-core"),
    note=f"Android NNAPI deployment (.ort, basic optimizations so NNAPI sees plain ops); {_PROXY}; "
         "see the mobile usability summary for NNAPI coverage",
    device_providers=("NnapiExecutionProvider", "CPUExecutionProvider"),
))
TARGETS.add("mobile-coreml", Target(
    name="mobile-coreml", providers=_CPU, intra_threads=1, inter_threads=1, graph_opt_level="basic",
    execution_mode="sequential", model_format="ort", profile=PROFILES.get("apple-a14-core"),
    note=f"iOS CoreML deployment (.ort, basic optimizations); {_PROXY}; see the mobile usability summary for "
         "CoreML NeuralNetwork/MLProgram coverage",
    device_providers=("CoreMLExecutionProvider", "CPUExecutionProvider"),
))
TARGETS.add("board-a53", Target(
    name="board-a53", providers=_CPU, intra_threads=1, inter_threads=1, graph_opt_level="all",
    execution_mode="sequential", model_format="ort", profile=PROFILES.get("cortex-a53-board"),
    note=f"Cortex-A53 single-board computer (.ort, CPU EP); {_PROXY}",
    device_providers=_CPU,
))


def get_target(name: str) -> Target:
    """The registered target ``name``; the one check every config value naming a target goes through.

    Both ``benchmark.target`` and ``factorize.budget.target`` name entries of this registry, so config validation
    calls this for each of them.

    Raises:
        ConfigError: an unknown name, listing the known ones.
    """
    return TARGETS.get(name)


def target_session(path: str | Path, target: Target, threads: int | None = None, profile_dir: str | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` with ``target``'s settings (via :func:`pipeline.ort_session.make_session`).

    Args:
        path: ``.onnx`` or ``.ort`` model produced or checked by this pipeline (ORT has no sandbox).
        target: the target whose settings to apply.
        threads: overrides ``target.intra_threads``.
        profile_dir: when given, ORT profiling is enabled and its JSON is written there.

    Raises:
        InputError: the model file does not exist.
        ConfigError: a provider of the target is not available in this onnxruntime build.
    """
    try:
        return make_session(Path(path), threads=threads if threads is not None else target.intra_threads,
                            providers=target.providers, opt_level=target.graph_opt_level, profile=profile_dir,
                            inter_threads=target.inter_threads, execution_mode=target.execution_mode,
                            session_config=target.session_config)
    except ConfigError as e:
        raise ConfigError(f"target {target.name}: {e}") from e
