"""Suite ``models``: across models, original / uniform unaligned / factorize only / int8 only / factorize + int8.

Random weights (latency, size and MACs do not depend on values). Full: resnet20, resnet56, vgg11, resnet18_cifar
at 32x32, mobilenet_v2 and resnet18 at 224x224. Quick: the ``tiny`` test network at 8x8.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.config import QuantizeConfig
from pipeline.factorize.swap import factorize_model
from pipeline.models import build_model
from pipeline.quantize.ort_static import quantize_static
from pipeline.suites._common import QUICK_MODEL, Table, export, fact_cfg, graph_macs, time_files

FULL_CASES = [("resnet20", 32), ("resnet56", 32), ("vgg11", 32), ("resnet18_cifar", 32), ("mobilenet_v2", 224),
              ("resnet18", 224)]
QUICK_CASES = [(QUICK_MODEL, 8)]


def bench_models(quick: bool = False, root: Path | None = None) -> Table:
    """Latency, size and MACs of each model's five variants, timed interleaved per model (``root`` unused)."""
    cases = QUICK_CASES if quick else FULL_CASES
    samples = 5 if quick else 50
    calib_n = 8 if quick else 32
    rows = []
    for name, size in cases:
        torch.manual_seed(0)
        model = build_model(name, 10, 3, size).eval()
        shape = (3, size, size)
        x = torch.zeros(1, *shape)
        calib = np.random.default_rng(0).standard_normal((calib_n, *shape)).astype(np.float32)
        with tempfile.TemporaryDirectory() as td:
            t = Path(td)
            files = {"original": export(model, shape, t / "orig.onnx")}
            uni, _, _ = factorize_model(model, fact_cfg(method="tucker2", selector="fixed", ratio=0.23, align=1), x)
            files["uniform unaligned"] = export(uni.eval(), shape, t / "uni.onnx")
            fac, _, _ = factorize_model(model, fact_cfg(method="tucker2", selector="fixed", ratio=0.25, align=8,
                                                        min_channels=32, min_mac_saving=0.1), x)
            files["factorize only"] = export(fac.eval(), shape, t / "fac.onnx")
            qcfg = QuantizeConfig(calib_size=calib_n)
            quantize_static(files["original"], t / "orig.int8.onnx", calib, qcfg)
            files["int8 only"] = t / "orig.int8.onnx"
            quantize_static(files["factorize only"], t / "fac.int8.onnx", calib, qcfg)
            files["factorize + int8"] = t / "fac.int8.onnx"
            lat = time_files(files, shape, samples)
            macs = {n: graph_macs(p, shape) for n, p in files.items()}
            sizes = {n: p.stat().st_size for n, p in files.items()}
        for v in files:
            rows.append({"model": f"{name}@{size}", "variant": v, "MACs (M)": round(macs[v] / 1e6, 2),
                         "size KB": round(sizes[v] / 1024, 1), "p50 ms": round(lat[v]["p50"], 3),
                         "p90 ms": round(lat[v]["p90"], 3),
                         "speedup": round(lat["original"]["p50"] / lat[v]["p50"], 2),
                         "smaller": round(sizes["original"] / sizes[v], 2)})
    return {
        "title": "Models x variants (random weights: latency and size only), batch 1, ORT CPU 1 thread",
        "settings": f"{samples} interleaved samples per variant; Tucker-2 of block convs; uniform = ratio 0.23 of "
                    f"channels, no alignment, every layer; factorize only = ratio 0.25, ranks x8, layers >= 32 channels "
                    f"that save >= 10% MACs; int8 = ORT static QDQ U8S8 per-channel",
        "columns": ["model", "variant", "MACs (M)", "size KB", "p50 ms", "p90 ms", "speedup", "smaller"],
        "rows": rows,
        "notes": ["narrow networks (resnet20/56, 16-64 channels) are bound by per-node overhead at 32x32: MACs saved "
                  "there turn into little time; wide layers (vgg11, resnet18) realize most of the reduction",
                  "mobilenet_v2 has only 1x1 and depthwise convs: Tucker-2 leaves them dense (a depthwise conv has "
                  "nothing to factorize; a 1x1 is a matrix, for channel_svd), so only int8 changes it"],
    }
