"""Measured ONNX Runtime latency of single layers: dense vs factorized, for ``break_even`` and ``budget.latency``.

MACs are not latency (PERFORMANCE.md): narrow factorized layers at small spatial sizes are bound by per-node
overhead, and unaligned ranks lose ORT's NCHWc blocking. So the factorizer can ask how long one layer actually takes.

How a layer is timed (PERFORMANCE.md, "How to time"): every variant of the layer (dense and each requested
factorized form) is exported alone to ONNX (opset 17, random weights: latency does not depend on values), one ORT
CPU session each with 1 intra-op thread, batch 1; all sessions are created and warmed up first, then timed
interleaved in random order in small chunks until each has ``repeats`` samples; the median is kept. With one
intra-op thread the work runs in the calling thread, so ``time.thread_time`` measures compute and excludes
preemption by the other tenants of a shared machine.

Results are cached on disk (JSON, atomic replace) keyed by layer geometry, input size, format, ranks, ORT version,
target and session settings, so repeated runs and the budget search do not re-measure.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import os
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

# Targets this module can measure: all run on the local CPU execution provider. Other targets (mobile boards)
# cannot be measured here, and silently timing them on this CPU would mislabel the numbers.
TARGETS: dict[str, dict[str, Any]] = {"cpu": {"intra_threads": 1, "inter_threads": 1, "graph_opt": "all"}}

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
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        raise ConfigError("measuring layer latency needs onnxruntime: pip install onnxruntime") from e
    return str(ort.__version__)


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
                       "ort": _ort_version(), "target": target, "settings": TARGETS[target]}, sort_keys=True)


def _module_for(layer: nn.Module, variant: Variant) -> nn.Module:
    from pipeline.factorize.formats import FORMATS

    fmt, ranks = variant
    base = copy.deepcopy(layer).float().cpu()
    if fmt is None:
        return base.eval()
    return FORMATS.get(fmt).build(base, tuple(ranks or ())).float().eval()


def _session(module: nn.Module, example: torch.Tensor, target: str) -> Any:
    import onnxruntime as ort

    buf = io.BytesIO()
    # dynamo=False on purpose (PERFORMANCE.md: the dynamo exporter cannot emit opset 17 in torch 2.13); its
    # deprecation warning is expected here and would only flood the log once per measured variant.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=17, input_names=["x"])
    settings = TARGETS[target]
    so = ort.SessionOptions()
    so.intra_op_num_threads = settings["intra_threads"]
    so.inter_op_num_threads = settings["inter_threads"]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


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
        target: a key of :data:`TARGETS` (the settings the sessions use).
        repeats: samples per variant (each a single ``run``).
        chunk: consecutive runs of one variant before switching (interleaving granularity).
        use_cache: read and write the on-disk cache.
        seed: seeds the random weights and the interleaving order.

    Returns:
        Medians in ms, in the order of ``variants``. If any variant is not cached, all of them are measured
        together, so the numbers being compared come from the same run (same-run ratios are the reliable ones).
    """
    if target not in TARGETS:
        raise ConfigError(f"latency target {target!r} cannot be measured here (known: {', '.join(TARGETS)}); "
                          "set factorize.budget.target=cpu")
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
    sessions = [_session(_module_for(layer, v), example, target) for v in variants]
    feed = {"x": example.numpy()}
    for s in sessions:  # warm-up: first runs allocate buffers and pick kernels
        for _ in range(3):
            s.run(None, feed)
    samples: list[list[float]] = [[] for _ in sessions]
    rng = random.Random(seed)
    order = list(range(len(sessions)))
    while min(len(t) for t in samples) < repeats:
        rng.shuffle(order)
        for i in order:
            for _ in range(chunk):
                t0 = time.thread_time_ns()
                sessions[i].run(None, feed)
                samples[i].append((time.thread_time_ns() - t0) / 1e6)
    medians = [float(statistics.median(t)) for t in samples]
    if use_cache:
        _store_cache(path, dict(zip(keys, medians)))
    return medians


def layer_latency(layer: nn.Module, in_hw: tuple[int, int], fmt: str | None = None,
                  ranks: Sequence[int] | None = None, **kw: Any) -> float:
    """Median ms of one variant (dense when ``fmt`` is None); see :func:`measure_variants`."""
    return measure_variants(layer, in_hw, [(fmt, tuple(ranks) if ranks else None)], **kw)[0]
