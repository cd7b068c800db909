"""Suite ``factorize``: each format at a ~3x MAC budget, aligned vs unaligned ranks, measured side by side.

Full: ResNet-18 224x224 (random weights: only speed is measured), four formats x three rank alignments, plus the
time to factorize ResNet-50. Quick: the ``tiny`` test network at 8x8, the same variants, few samples.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.factorize.swap import count_macs_params, factorize_model
from pipeline.models import build_model
from pipeline.suites._common import QUICK_MODEL, Table, export, fact_cfg, graph_macs, time_files

FORMATS = ("tucker2", "channel_svd", "spatial_svd", "cp")
ALIGNS = ((8, "aligned x8"), (16, "aligned x16"), (1, "unaligned"))


@dataclass(frozen=True)
class Plan:
    """What one run of the suite measures."""

    model: str
    size: int
    samples: int
    search_steps: int   # bisection steps of the ratio search
    big_model: str      # the model whose whole factorization is timed
    big_size: int
    calib_images: int   # calibration images of the big model's data-aware factorization


FULL = Plan("resnet18", 224, 50, 9, "resnet50", 224, 32)
QUICK = Plan(QUICK_MODEL, 8, 5, 4, "resnet20", 8, 8)


def _data_aware_seconds(big: torch.nn.Module, plan: Plan) -> tuple[float, float]:
    """Seconds of the big model's whole data-aware factorization (statistics of every conv on ``calib_images``
    seeded random images, then each layer's whitened decomposition), and of one plain forward pass over the same
    images: the part of the first that is the calibration pass's unavoidable cost."""
    gen = torch.Generator().manual_seed(0)
    calib = torch.randn(plan.calib_images, 3, plan.big_size, plan.big_size, generator=gen)
    t0 = time.perf_counter()
    factorize_model(big, fact_cfg(method="tucker2", selector="energy", energy=0.6, align=8, objective="outputs",
                                  calib_images=plan.calib_images),
                    torch.zeros(1, 3, plan.big_size, plan.big_size), calib_images=calib)
    aware_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, plan.calib_images, 16):  # the statistics pass's batch size
            big(calib[i:i + 16])
    return aware_s, time.perf_counter() - t0


def ratio_for_budget(model: torch.nn.Module, fmt: str, x: torch.Tensor, target: float, align: int,
                     steps: int = 9) -> float:
    """Fixed per-layer rank ratio that brings the factorized convs' whole-model MACs to ``1/target`` (bisection)."""
    macs0, _ = count_macs_params(model, x)
    lo, hi = 0.02, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        m, _, _ = factorize_model(model, fact_cfg(method=fmt, selector="fixed", ratio=mid, align=align, cp_max_iters=1,
                                                  cp_time_limit_s=0.01), x)
        red = macs0 / count_macs_params(m, x)[0]
        if red > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def bench_factorize(quick: bool = False, root: Path | None = None) -> Table:
    """Each format at a ~3x MAC budget, aligned vs unaligned ranks, side by side in one run (``root`` unused)."""
    plan = QUICK if quick else FULL
    size = plan.size
    torch.manual_seed(0)
    model = build_model(plan.model, 1000, 3, size).eval()
    shape = (3, size, size)
    x = torch.zeros(1, *shape)
    rows = []
    files: dict[str, Path] = {}
    meta: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as td:
        files["dense"] = export(model, shape, Path(td) / "dense.onnx")
        for fmt in FORMATS:
            ratio = ratio_for_budget(model, fmt, x, 3.0, align=1, steps=plan.search_steps)
            for align, label in ALIGNS:
                t0 = time.perf_counter()
                fm, layers, _ = factorize_model(model, fact_cfg(method=fmt, selector="fixed", ratio=ratio, align=align,
                                                                cp_max_iters=10, cp_time_limit_s=2.0), x)
                secs = time.perf_counter() - t0
                name = f"{fmt} {label}"
                files[name] = export(fm.eval(), shape, Path(td) / f"{fmt}-{align}.onnx")
                ranks = [tuple(l.ranks) for l in layers if l.status == "factorized"]
                unaligned = sum(any(v % 8 for v in rk) for rk in ranks)
                meta[name] = {"format": fmt, "ranks": label, "ratio": round(ratio, 4), "factorize_s": round(secs, 2),
                              "layers": len(ranks), "layers_with_unaligned_ranks": unaligned}
        lat = time_files(files, shape, plan.samples)
        macs = {n: graph_macs(p, shape) for n, p in files.items()}
    base = lat["dense"]["p50"]
    for name in files:
        if name == "dense":
            continue
        red = macs["dense"] / macs[name]
        sp = base / lat[name]["p50"]
        rows.append({"variant": name, **meta[name], "MAC reduction": round(red, 2), "p50 ms": round(lat[name]["p50"], 2),
                     "speedup": round(sp, 2), "efficiency": round(sp / red, 2)})
    # Time to select ranks and factorize a big model (all convs, Tucker-2 + energy).
    big = build_model(plan.big_model, 1000, 3, plan.big_size).eval()
    t0 = time.perf_counter()
    factorize_model(big, fact_cfg(method="tucker2", selector="energy", energy=0.6, align=8),
                    torch.zeros(1, 3, plan.big_size, plan.big_size))
    big_s = time.perf_counter() - t0
    aware_s, forward_s = _data_aware_seconds(big, plan)
    return {
        "title": f"Factorization formats on {plan.model} {size}x{size}, batch 1, ORT CPU 1 thread",
        "settings": f"dense p50 {base:.2f} ms; {plan.samples} interleaved samples per variant; all 3x3 convs but the "
                    f"stem; ranks from one fixed ratio per format (searched for a 3x MAC budget)",
        "columns": ["variant", "ratio", "layers", "layers_with_unaligned_ranks", "MAC reduction", "p50 ms", "speedup",
                    "efficiency", "factorize_s"],
        "rows": rows,
        "notes": [f"{plan.big_model} (all convs, Tucker-2 + energy 0.6, {plan.big_size}x{plan.big_size}): ranks selected "
                  f"and factorized in {big_s:.2f} s",
                  f"{plan.big_model} data-aware (objective=outputs, {plan.calib_images} calibration images): "
                  f"{aware_s:.2f} s in all, of which a plain forward pass over those images takes {forward_s:.2f} s",
                  "efficiency = measured speedup / whole-model MAC reduction (1.0 = every saved MAC became time)"],
        f"{plan.big_model}_factorize_s": big_s,  # "resnet50_factorize_s" in the full run, as before
        f"{plan.big_model}_data_aware_s": aware_s,
        f"{plan.big_model}_calib_forward_s": forward_s,
    }
