"""Measuring latency (the measurement library's timing half; the factorizer's cached per-layer latency model in
:mod:`pipeline.factorize.latency` times through :func:`time_interleaved` here).

Honest latency: all sessions created and warmed first, then variants timed interleaved in random order in small
chunks (docs/benchmarking.md), so slow drift of a shared machine hits every variant alike; plus ORT per-node
profiles."""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from benchmarks.energy import module_path
from benchmarks.targets import Target, target_session
from exporters.ort_mobile import convert_to_ort
from pipeline.errors import ConfigError


def _input_name(sess: Any) -> str:
    inp = sess.get_inputs()
    if len(inp) != 1:
        raise ConfigError(f"latency: models must have exactly one input, found {[i.name for i in inp]}")
    return inp[0].name


#: ``{variant name: (shipped .ort file, session config entries it needs)}``
ShippedOrt = Mapping[str, tuple[str | Path, Mapping[str, str]]]


def _prepare(models: dict[str, str | Path], target: Target, workdir: Path,
             shipped: ShippedOrt | None = None) -> dict[str, Path]:
    """The files to time: for an ORT-format target (mobile proxies), the shipped ``.ort`` of a variant when there is
    one (what the app loads, not a re-conversion), else ``.onnx`` models converted to ``.ort`` in ``workdir``."""
    out: dict[str, Path] = {}
    for name, path in models.items():
        p = Path(path)
        if target.model_format == "ort" and shipped and name in shipped:
            out[name] = Path(shipped[name][0])
        elif target.model_format == "ort" and p.suffix.lower() == ".onnx":
            d = workdir / f"v{len(out)}"
            out[name] = Path(convert_to_ort(p, d)["ort_path"])
        else:
            out[name] = p
    return out


def _session_target(target: Target, name: str, shipped: ShippedOrt | None) -> Target:
    """``target`` with the session options the shipped ``.ort`` of ``name`` needs (Runtime-style files replay their
    saved optimizations only with ``session.enable_saved_runtime_optimizations=1``)."""
    if target.model_format != "ort" or not shipped or name not in shipped or not shipped[name][1]:
        return target
    extra = tuple((str(k), str(v)) for k, v in sorted(shipped[name][1].items()))
    return dataclasses.replace(target, session_config=tuple(target.session_config) + extra)


def _stats(wall_s: list[float], cpu_s: list[float]) -> dict[str, Any]:
    w = np.asarray(wall_s, dtype=np.float64) * 1e3
    c = np.asarray(cpu_s, dtype=np.float64) * 1e3
    # np.percentile with linear interpolation is monotone in q, so p50 <= p90 <= p99 always holds.
    p50, p90, p99 = (float(v) for v in np.percentile(w, [50, 90, 99]))
    return {
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "mean": float(w.mean()),
        "min": float(w.min()),
        "max": float(w.max()),
        "std": float(w.std()),
        "cpu_p50": float(np.percentile(c, 50)),
        "samples": int(w.size),
    }


def time_interleaved(
    runs: Mapping[str, Callable[[], Any]],
    samples: int,
    warmup: int,
    chunk: int,
    rng: np.random.Generator,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The one timing loop: warm every variant up, then time them interleaved until each has ``samples`` runs.

    Round after round, the variants with samples still to take are visited in a random order (from ``rng``) and
    each takes up to ``chunk`` consecutive timed runs. Wall time comes from ``perf_counter``; CPU time from
    ``thread_time``, which at one intra-op thread is the compute time of the call, free of preemption by other
    tenants of a shared machine.

    Args:
        runs: ``{variant name: zero-argument callable running one inference}``.
        samples: timed runs per variant.
        warmup: untimed runs per variant first (buffers are allocated and kernels chosen on the first runs).
        chunk: consecutive runs per visit.
        rng: the visiting order's random source.

    Returns:
        ``(wall seconds, cpu seconds)``, each ``{name: [one value per run]}``.
    """
    names = list(runs)
    for n in names:
        for _ in range(warmup):
            runs[n]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    while True:
        pending = [n for n in names if len(wall[n]) < samples]
        if not pending:
            break
        for i in rng.permutation(len(pending)):
            n = pending[int(i)]
            fn = runs[n]
            for _ in range(min(chunk, samples - len(wall[n]))):
                c0 = time.thread_time()
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                c1 = time.thread_time()
                wall[n].append(t1 - t0)
                cpu[n].append(c1 - c0)
    return wall, cpu


#: largest share of the available memory one timed input batch may take (sessions and outputs need the rest)
BATCH_MEMORY_SHARE = 1 / 8


def available_memory_bytes() -> int | None:
    """Memory the system can give this process now: ``MemAvailable`` of /proc/meminfo, else free pages (POSIX).

    None when neither is known (then no bound is applied).
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_batch_fits(batch: int, input_shape: tuple[int, ...], available: int | None = None) -> None:
    """Refuse a timed batch whose float32 input alone exceeds :data:`BATCH_MEMORY_SHARE` of the available memory.

    Raises:
        ConfigError: naming ``benchmark.batch``, the bytes it needs, the bytes available and the largest batch that fits.
    """
    avail = available_memory_bytes() if available is None else available
    if avail is None:
        return
    per_image = 4 * int(np.prod(input_shape, dtype=np.int64))
    need = int(batch) * per_image
    allowed = int(avail * BATCH_MEMORY_SHARE)
    if need > allowed:
        fits = max(1, allowed // max(1, per_image))
        raise ConfigError(
            f"config key 'benchmark.batch': {batch} images of shape {tuple(input_shape)} need {need / 2**20:.0f} MiB "
            f"for the input alone, more than 1/8 of the {avail / 2**20:.0f} MiB available; set benchmark.batch to "
            f"at most {fits} (1 matches on-device use)"
        )


def _is_allocation_failure(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return any(s in text for s in ("failed to allocate", "bad allocation", "bad_alloc", "out of memory"))


def measure_latency(
    models: dict[str, str | Path],
    target: Target,
    input_shape: tuple[int, int, int],
    batch: int = 1,
    samples: int = 60,
    warmup: int = 10,
    threads: int | None = None,
    seed: int = 0,
    chunk: int = 5,
    shipped_ort: ShippedOrt | None = None,
    raw: bool = False,
) -> dict[str, dict]:
    """Time several model files against each other in one run.

    Every session is created first and warmed up; then, round after round, the variants with samples still to take
    are visited in a random (seeded) order and each takes up to ``chunk`` consecutive timed runs, until every variant
    has exactly ``samples`` samples. Wall time comes from ``perf_counter``; ``cpu_p50`` from ``thread_time``, which at
    one intra-op thread is the compute time of this call, free of preemption by other tenants.

    Args:
        models: ``{variant name: model path}`` (``.onnx`` or ``.ort``); for ``model_format="ort"`` targets, ``.onnx``
            files are converted to ``.ort`` in a temp folder first.
        target: session settings.
        input_shape: ``(C, H, W)``.
        batch: batch size of the timed input.
        samples: timed runs per variant.
        warmup: untimed runs per variant after session creation.
        threads: ``intra_op_num_threads`` override (default: the target's).
        seed: seeds the visiting order and the input values.
        chunk: consecutive runs per visit.
        shipped_ort: for ORT-format targets, the shipped ``.ort`` file (and its session options) to time for a
            variant instead of converting its ``.onnx``.
        raw: also return the wall-time samples in timing order (``"samples_ms"``), for a ratio's interval.

    Returns:
        ``{name: {"p50", "p90", "p99", "mean", "min", "max", "std", "cpu_p50" (ms), "samples", "settings": {...}}}``
        (plus ``"samples_ms"`` when ``raw``).

    Raises:
        ConfigError: bad counts, a model with more than one input, or a batch that does not fit in memory
            (checked before allocating; an allocation failure while timing is reported the same way).
    """
    if samples < 1 or warmup < 0 or chunk < 1 or batch < 1:
        raise ConfigError(f"latency: need samples >= 1, warmup >= 0, chunk >= 1, batch >= 1 (got {samples}, {warmup}, {chunk}, {batch})")
    if not models:
        return {}
    check_batch_fits(batch, input_shape)
    try:
        return _measure(models, target, input_shape, batch, samples, warmup, threads, seed, chunk, shipped_ort, raw)
    except Exception as e:  # MemoryError from numpy, or ORT's RuntimeException when its arena cannot grow
        if not _is_allocation_failure(e):
            raise
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(f"config key 'benchmark.batch': timing a batch of {batch} ran out of memory ({first}); "
                          f"lower benchmark.batch (1 matches on-device use)") from None


def _measure(models: dict[str, str | Path], target: Target, input_shape: tuple[int, int, int], batch: int,
             samples: int, warmup: int, threads: int | None, seed: int, chunk: int, shipped_ort: ShippedOrt | None,
             raw: bool) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    names = list(models)
    with tempfile.TemporaryDirectory(prefix="lrd-latency-") as td:
        files = _prepare(models, target, Path(td), shipped_ort)
        sessions = {n: target_session(files[n], _session_target(target, n, shipped_ort), threads=threads)
                    for n in names}
        # The same input values for every variant: only the model differs between them.
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        feeds = {n: {_input_name(sessions[n]): x} for n in names}
        runs = {n: (lambda s=sessions[n], f=feeds[n]: s.run(None, f)) for n in names}
        wall, cpu = time_interleaved(runs, samples, warmup, chunk, rng)
        del runs, sessions
    settings = {
        **target.settings(threads),
        "batch": batch,
        "input_shape": list(input_shape),
        "samples": samples,
        "warmup": warmup,
        "chunk": chunk,
        "seed": seed,
        "order": "interleaved, random per round",
        "cpu_time_note": "cpu_p50 from time.thread_time: meaningful at 1 intra-op thread",
    }
    out = {n: {**_stats(wall[n], cpu[n]), "settings": settings} for n in names}
    for n in names:
        if target.model_format == "ort" and shipped_ort and n in shipped_ort:
            out[n]["timed_file"] = Path(shipped_ort[n][0]).name  # the shipped file itself, not a re-conversion
    if raw:
        for n in names:
            out[n]["samples_ms"] = [float(v) * 1e3 for v in wall[n]]
    return out


# ---------------------------------------------------------------------------------------------- node profiles
_SUFFIXES = ("_kernel_time", "_fence_before", "_fence_after")


def _module_name(node_name: str) -> str:
    """Module path of a profiler event's node (:func:`benchmarks.energy.module_path` after the event suffix);
    ORT-generated nodes without scopes (``ReorderInput``) map to ``(runtime)``."""
    name = node_name
    for s in _SUFFIXES:
        if name.endswith(s):
            name = name[: -len(s)]
    if "/" not in name:
        return "(runtime)"
    return module_path(name) or "(graph)"


def _match_layer(module: str, layers: list[str]) -> str:
    """Longest registered layer name that is ``module`` or a dotted prefix of it (factorized Sequentials -> parent)."""
    best = ""
    for l in layers:
        if (module == l or module.startswith(l + ".")) and len(l) > len(best):
            best = l
    return best or module


def profile_nodes(
    path: str | Path,
    target: Target,
    input_shape: tuple[int, int, int],
    runs: int = 20,
    layers: Iterable[str] | None = None,
    warmup: int = 3,
) -> list[dict]:
    """Per-node kernel time from ONNX Runtime's profiler (``enable_profiling`` JSON trace), slowest first.

    Only kernel events of the ``runs`` profiled runs count (the first ``warmup`` runs are discarded by timestamp).
    A node's time is its median kernel duration times its call count (``raw_total_us`` keeps the plain sum), so a
    run preempted by another process does not inflate single nodes.
    Each row also names the PyTorch module the node came from (``layer``): with ``layers`` given (e.g. factorized
    layer names), nodes of a factorized layer's Sequential (``features.3.0``) are attributed to ``features.3``.

    Args:
        path: model file (``.onnx``; converted to ``.ort`` for ORT-format targets).
        target: session settings.
        input_shape: ``(C, H, W)`` (batch 1).
        runs: profiled runs.
        layers: optional original layer names to attribute nodes to.
        warmup: runs whose events are discarded.

    Returns:
        Rows sorted by total time: ``{"node", "op", "layer", "provider", "total_us" (all runs), "mean_us" (per run),
        "calls", "share"}``.

    Raises:
        ConfigError: ``runs < 1``.
    """
    if runs < 1 or warmup < 0:
        raise ConfigError(f"profile_nodes: need runs >= 1 and warmup >= 0 (got {runs}, {warmup})")
    known = sorted(set(layers or []))
    with tempfile.TemporaryDirectory(prefix="lrd-profile-") as td:
        files = _prepare({"m": path}, target, Path(td))
        sess = target_session(files["m"], target, profile_dir=td)
        x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
        feed = {_input_name(sess): x}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        prof = sess.end_profiling()
        events = json.loads(Path(prof).read_text())
    # Events carry timestamps: keep only kernels that ran after the warm-up runs.
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e.get("ts", 0))
    cutoff = model_runs[warmup]["ts"] if len(model_runs) > warmup else 0
    nodes: dict[str, dict[str, Any]] = {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e.get("ts", 0) < cutoff:
            continue
        node = name[: -len("_kernel_time")]
        args = e.get("args", {}) or {}
        row = nodes.get(node)
        if row is None:
            module = _module_name(name)
            row = nodes[node] = {
                "node": node,
                "op": str(args.get("op_name", "?")),
                "layer": _match_layer(module, known) if known else module,
                "provider": str(args.get("provider", "")),
                "total_us": 0.0,
                "calls": 0,
                "_durs": [],
            }
        row["_durs"].append(float(e.get("dur", 0)))
        row["calls"] += 1
    rows = list(nodes.values())
    for r in rows:
        # Median kernel time x calls: on a shared machine one preempted run would otherwise make a 30 us node look
        # like a 240 us one (seen on 2-core hosts running other jobs).
        durs = r.pop("_durs")
        r["raw_total_us"] = float(sum(durs))
        r["total_us"] = float(np.median(durs)) * len(durs)
        r["mean_us"] = r["total_us"] / runs
    total = sum(r["total_us"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["total_us"] / total
    rows.sort(key=lambda r: (-r["total_us"], r["node"]))
    return rows
