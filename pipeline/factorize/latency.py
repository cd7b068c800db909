"""The factorizer's per-layer latency model: measured, cached ORT latency of single layers, dense vs factorized,
for ``break_even`` and ``budget.latency``. (Measuring whole models is :mod:`benchmarks.latency`'s job; this module
times through its :func:`~benchmarks.latency.time_interleaved` loop and adds the layer export and the disk cache.)

MACs are not latency (docs/benchmarking.md): narrow factorized layers at small spatial sizes are bound by per-node
overhead, and unaligned ranks lose ORT's NCHWc blocking. So the factorizer can ask how long one layer actually takes.

How a layer is timed (docs/benchmarking.md): every variant of the layer (dense and each requested factorized form)
is exported alone to ONNX (opset 17, random weights: latency does not depend on values), one ORT CPU session each
with the target's settings (1 intra-op thread), batch 1; all sessions are created and warmed up first, then timed
interleaved in random order in small chunks until each has ``repeats`` samples; the median CPU time is kept. With one
intra-op thread the work runs in the calling thread, so ``time.thread_time`` measures compute and excludes
preemption by the other tenants of a shared machine.

Results are cached on disk (JSON, atomic replace) keyed by layer geometry, input size, format, ranks, ORT version,
target and session settings, so repeated runs and the budget search do not re-measure.
"""
from __future__ import annotations

import copy
import io
import json
import os
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from benchmarks.latency import time_interleaved
from benchmarks.targets import TARGETS, Target, get_target
from pipeline.errors import ConfigError
from pipeline.factorize.formats import FORMATS
from pipeline.logs import get_logger
from pipeline.ort_session import make_session

log = get_logger(__name__)  # under the runner's logger: reaches stderr and run.log

WARMUP = 3  # untimed runs per variant: the first runs allocate buffers and pick kernels

Variant = tuple[str | None, tuple[int, ...] | None]  # (format name or None for dense, ranks or None)


def cache_path() -> Path:
    """The latency cache file: ``$LOWRANK_CACHE`` (a ``.json`` file or a folder) or ``~/.cache/lowrank-deploy``."""
    env = os.environ.get("LOWRANK_CACHE")
    if env:
        p = Path(env).expanduser()
        return p if p.suffix == ".json" else p / "latency.json"
    return Path.home() / ".cache" / "lowrank-deploy" / "latency.json"


def _load_cache(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError) as e:
        # A damaged cache only costs re-measurement; it must not stop a run.
        log.warning("latency cache %s unreadable (%s); ignoring it", path, e)
        return {}


def _store_cache(path: Path, new: dict[str, float]) -> None:
    """Merge ``new`` into the cache file with an atomic replace (temp file in the same folder, fsync)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load_cache(path)  # re-read: another process may have added entries meanwhile
        data.update(new)
        fd, tmp = tempfile.mkstemp(prefix=".latency-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=0, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        log.warning("could not write latency cache %s (%s); results not cached", path, e)


def _ort_version() -> str:
    return str(ort.__version__)


def measurable_target(name: str) -> Target:
    """The registered target ``name`` if timing on this machine measures it (only ``cpu``).

    The other targets (mobile boards) are proxies here: timing them on this CPU and calling the result theirs would
    mislabel the numbers the factorizer decides on.

    Raises:
        ConfigError: unknown, or not measurable here.
    """
    t = get_target(name)
    if not t.measured_here:
        here = [n for n in TARGETS.names() if TARGETS.get(n).measured_here]
        raise ConfigError(f"latency target {name!r} cannot be measured here (measurable: {', '.join(here)}); "
                          "set factorize.budget.target=cpu")
    return t


def _settings(t: Target) -> dict[str, Any]:
    """The session settings that enter the cache key (same keys as before the registries were merged)."""
    return {"intra_threads": t.intra_threads, "inter_threads": t.inter_threads, "graph_opt": t.graph_opt_level}


def cache_key(layer: nn.Module, in_hw: tuple[int, int], variant: Variant, target: str) -> str:
    """Stable key of one measurement: geometry, input size, format, ranks, ORT version, target and settings."""
    fmt, ranks = variant
    if isinstance(layer, nn.Conv2d):
        geom = {"kind": "conv", "shape": list(layer.weight.shape), "stride": list(layer.stride),
                "padding": layer.padding if isinstance(layer.padding, str) else list(layer.padding),
                "dilation": list(layer.dilation), "groups": layer.groups, "bias": layer.bias is not None,
                "in_hw": list(in_hw)}
    else:
        geom = {"kind": "linear", "shape": list(layer.weight.shape), "bias": layer.bias is not None}
    return json.dumps({"layer": geom, "format": fmt or "dense", "ranks": list(ranks) if ranks else None,
                       "ort": _ort_version(), "target": target, "settings": _settings(measurable_target(target))},
                      sort_keys=True)


def _module_for(layer: nn.Module, variant: Variant) -> nn.Module:
    fmt, ranks = variant
    base = copy.deepcopy(layer).float().cpu()
    if fmt is None:
        return base.eval()
    return FORMATS.get(fmt).build(base, tuple(ranks or ())).float().eval()


def _session(module: nn.Module, example: torch.Tensor, target: Target) -> Any:
    buf = io.BytesIO()
    # dynamo=False on purpose (docs/benchmarking.md: the dynamo exporter cannot emit opset 17 in torch 2.13); its
    # deprecation warning is expected here and would only flood the log once per measured variant.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=17, input_names=["x"])
    return make_session(buf.getvalue(), threads=target.intra_threads, providers=target.providers,
                        opt_level=target.graph_opt_level, inter_threads=target.inter_threads,
                        execution_mode=target.execution_mode, session_config=target.session_config)


def measure_variants(
    layer: nn.Module,
    in_hw: tuple[int, int],
    variants: Sequence[Variant],
    *,
    target: str = "cpu",
    repeats: int = 50,
    chunk: int = 5,
    use_cache: bool = True,
    seed: int = 0,
) -> list[float]:
    """Median latency in milliseconds of each variant of one layer, batch 1, measured interleaved.

    Args:
        layer: the dense ``nn.Conv2d``/``nn.Linear`` (its geometry matters, not its values).
        in_hw: the layer's input spatial size (ignored for linear layers).
        variants: ``(None, None)`` for the dense layer, ``(format_name, ranks)`` for factorized forms.
        target: a measurable target of :data:`benchmarks.targets.TARGETS` (the settings the sessions use).
        repeats: samples per variant (each a single ``run``).
        chunk: consecutive runs of one variant before switching (interleaving granularity).
        use_cache: read and write the on-disk cache.
        seed: seeds the random weights and the interleaving order.

    Returns:
        Medians in ms, in the order of ``variants``. If any variant is not cached, all of them are measured
        together, so the numbers being compared come from the same run (same-run ratios are the reliable ones).
    """
    tgt = measurable_target(target)
    keys = [cache_key(layer, in_hw, v, target) for v in variants]
    path = cache_path()
    cached = _load_cache(path) if use_cache else {}
    if all(k in cached for k in keys):
        return [cached[k] for k in keys]
    torch.manual_seed(seed)
    if isinstance(layer, nn.Conv2d):
        example = torch.randn(1, layer.in_channels, *in_hw)
    else:
        example = torch.randn(1, layer.in_features)
    sessions = [_session(_module_for(layer, v), example, tgt) for v in variants]
    feed = {"x": example.numpy()}
    runs = {str(i): (lambda s=s: s.run(None, feed)) for i, s in enumerate(sessions)}
    # whole chunks: every variant gets the same number of samples, ``repeats`` rounded up to a multiple of ``chunk``
    n = -(-repeats // chunk) * chunk
    _, cpu = time_interleaved(runs, n, WARMUP, chunk, np.random.default_rng(seed))
    medians = [float(statistics.median(cpu[str(i)])) * 1e3 for i in range(len(sessions))]
    if use_cache:
        _store_cache(path, dict(zip(keys, medians)))
    return medians


def layer_latency(layer: nn.Module, in_hw: tuple[int, int], fmt: str | None = None,
                  ranks: Sequence[int] | None = None, **kw: Any) -> float:
    """Median ms of one variant (dense when ``fmt`` is None); see :func:`measure_variants`."""
    return measure_variants(layer, in_hw, [(fmt, tuple(ranks) if ranks else None)], **kw)[0]
