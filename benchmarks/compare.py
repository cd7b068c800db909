"""Same-run comparison of model variants: measured speedups next to MAC reduction, size and roofline estimates.

PERFORMANCE.md's "efficiency" (realized speedup / whole-model MAC reduction) is the number that answers "the
compressed model is not faster": it needs both variants timed in the same interleaved run, which is what this does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.energy import onnx_layer_stats, roofline_all
from benchmarks.latency import measure_latency
from benchmarks.storage import artifact_bytes
from benchmarks.targets import TARGETS, Target
from pipeline.errors import ConfigError


def time_variants(
    models: dict[str, str | Path],
    input_shape: tuple[int, int, int],
    target: str | Target = "cpu",
    baseline: str | None = None,
    samples: int = 50,
    warmup: int = 5,
    threads: int | None = 1,
    batch: int = 1,
    seed: int = 0,
    roofline: bool = True,
) -> dict[str, Any]:
    """Time ``models`` interleaved in one run and compare each with ``baseline``.

    Args:
        models: ``{variant name: .onnx path}``.
        input_shape: ``(C, H, W)``.
        target: a registered target name or a ``Target``.
        baseline: the reference variant (default: the first one).
        samples: timed runs per variant.
        warmup: untimed runs per variant.
        threads: intra-op threads (1: ``cpu_p50`` is trustworthy on a shared machine).
        batch: batch size.
        seed: order / input seed.
        roofline: add the roofline latency of each variant on every device profile (from the ONNX graph).

    Returns:
        ``{"baseline", "settings", "rows": [{"variant", "p50_ms", "p90_ms", "p99_ms", "cpu_p50_ms", "samples",
        "speedup", "cpu_speedup", "macs", "mac_reduction", "efficiency", "params", "size_bytes", "smaller",
        "roofline_ms": {profile: ms}}]}``; ``efficiency = speedup / mac_reduction`` (1.0: every saved MAC became
        time; None where the MAC reduction is 1).

    Raises:
        ConfigError: no models, or ``baseline`` is not one of them.
    """
    if not models:
        raise ConfigError("time_variants: no models given")
    base = baseline if baseline is not None else next(iter(models))
    if base not in models:
        raise ConfigError(f"time_variants: baseline {base!r} is not a variant; variants: {', '.join(models)}")
    tgt = TARGETS.get(target) if isinstance(target, str) else target
    lat = measure_latency(models, tgt, input_shape, batch=batch, samples=samples, warmup=warmup, threads=threads,
                          seed=seed)
    stats = {n: onnx_layer_stats(p, input_shape) for n, p in models.items()}
    sizes = {n: artifact_bytes(p) for n, p in models.items()}
    b_lat, b_stats, b_size = lat[base], stats[base], sizes[base]
    rows = []
    for name in models:
        l, st = lat[name], stats[name]
        speedup = b_lat["p50"] / l["p50"]
        cpu_speedup = b_lat["cpu_p50"] / l["cpu_p50"] if l.get("cpu_p50") and b_lat.get("cpu_p50") else None
        red = b_stats["macs"] / st["macs"] if st["macs"] else None
        row: dict[str, Any] = {
            "variant": name,
            "p50_ms": l["p50"], "p90_ms": l["p90"], "p99_ms": l["p99"], "cpu_p50_ms": l.get("cpu_p50"),
            "samples": l["samples"],
            "speedup": speedup, "cpu_speedup": cpu_speedup,
            "macs": st["macs"], "mac_reduction": red,
            # Efficiency is undefined without a MAC reduction (e.g. int8 of the same graph, or the baseline).
            "efficiency": speedup / red if red and abs(red - 1.0) > 1e-9 else None,
            "params": st["params"], "size_bytes": sizes[name], "smaller": b_size / sizes[name],
        }
        if roofline:
            row["roofline_ms"] = {p: r["latency_ms"] for p, r in roofline_all(st, precision="graph").items()}
        rows.append(row)
    settings = dict(next(iter(lat.values())).get("settings", {}))
    settings.update({"baseline": base, "samples": samples, "warmup": warmup, "batch": batch})
    return {"baseline": base, "settings": settings, "rows": rows}
