"""Suite ``storage``: fp32 / int8 / container sizes through the whole pipeline, default and compact configs.

Full: vgg11, resnet56, resnet20 on digits (and shapes). Quick: the ``tiny`` network on the quick data set. Also
reports accuracy of the model rebuilt from the container, bits per weight vs the order-0 bound, and decode and
whole-file read speeds.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.suites._common import QUICK_MODEL, QUICK_OVERRIDES, Table, datasets, pipeline_run, quick_data

# compact = what a storage-bound deployment would choose: aggressive fixed ranks + 4-bit weights in the int8 grid,
# recovered by a short quantization-aware finetune (without it, 4-bit costs resnet20 ~3 points on digits).
_RESNET = ["factorize.selector=fixed", "factorize.ratio=0.25", "factorize.min_channels=16", "factorize.align=8",
           "finetune.epochs=8", "quantize.weight_bits=4", "quantize.qat_epochs=3"]
COMPACT: dict[tuple[str, str], list[str]] = {
    ("vgg11", "digits"): ["factorize.selector=fixed", "factorize.ratio=0.0625", "quantize.weight_bits=4",
                          "quantize.qat_epochs=2"],
    # shapes is harder: 6.25% ranks lose > 10 points there, 25% keep it within a point with QAT.
    ("vgg11", "shapes"): ["factorize.selector=fixed", "factorize.ratio=0.25", "quantize.weight_bits=4",
                          "quantize.qat_epochs=4"],
    ("resnet20", "digits"): _RESNET, ("resnet20", "shapes"): _RESNET, ("resnet56", "digits"): _RESNET,
    (QUICK_MODEL, "quick"): _RESNET,
}


def _cases(quick: bool) -> list[tuple[str, str, str]]:
    if quick:
        return [(QUICK_MODEL, "quick", "default"), (QUICK_MODEL, "quick", "compact")]
    cases = [("vgg11", "digits", "default"), ("vgg11", "digits", "compact"), ("resnet56", "digits", "default"),
             ("resnet56", "digits", "compact"), ("resnet20", "digits", "default"), ("resnet20", "digits", "compact")]
    if "shapes" in datasets():
        cases += [("resnet20", "shapes", "default"), ("resnet20", "shapes", "compact"), ("vgg11", "shapes", "compact")]
    return cases


def bench_storage(quick: bool = False, root: Path = Path("artifacts")) -> Table:
    """Whole pipeline, default and compact configs: sizes of every shipped form, accuracy of the unpacked model."""
    rows = []
    for model, data, kind in _cases(quick):
        extra = list(COMPACT[(model, data)]) if kind == "compact" else []
        if quick:  # last, so they override the compact config's epochs
            extra += QUICK_OVERRIDES + (["quantize.qat_epochs=1"] if kind == "compact" else [])
        spec = quick_data(root) if data == "quick" else data
        res, _ = pipeline_run(model, spec, root, extra + ["export.mobile=false"])
        rep = json.loads(res.artifact("benchmark").path("report.json").read_text())
        by = {v["name"]: v for v in rep["variants"]}
        # Sizes and bits from the report; decode speeds from the entropy-code stage that measured them (the
        # benchmark stage is reused when the container bytes are unchanged, so its copy may be from an earlier run).
        c = {**rep["container"], **{k: v for k, v in res.artifact("entropy-code").metrics.items()
                                    if k in ("decode_mb_s", "read_mb_s")}}
        acc0, acc1 = by["original"]["accuracy"], by["unpacked"]["accuracy"]
        rows.append({
            "model": model, "data": data, "config": kind,
            "fp32 ONNX KB": round(by["original"]["size_bytes"] / 1024, 1),
            "int8 ONNX KB": round(by["int8"]["size_bytes"] / 1024, 1),
            "container KB": round(c["size_bytes"] / 1024, 1),
            "ratio vs fp32": round(by["original"]["size_bytes"] / c["size_bytes"], 1),
            "acc original": acc0, "acc unpacked": acc1,
            "drop (points)": round(100 * (acc0 - acc1), 2) if acc0 is not None and acc1 is not None else None,
            "bits/weight": c.get("total_bits_per_weight"), "order-0 bound": c.get("order0_bits_per_weight"),
            "of which tables": c.get("table_bits_per_weight"),
            "decode MB/s": c.get("decode_mb_s"), "read MB/s": c.get("read_mb_s"), "streams": c.get("streams"),
        })
    return {
        "title": "Storage: original fp32 ONNX vs int8 ONNX vs entropy-coded container",
        "settings": "default = the default pipeline config (Tucker-2, energy ranks, KD finetune, U8S8 per-channel "
                    "QDQ, coder auto); compact = fixed ranks (vgg11 6.25% of channels on digits, 25% on shapes; "
                    "resnets 25% on layers >= 16 channels, x8, 8 KD epochs) + 4-bit weights carried in the int8 graph "
                    "after a quantization-aware finetune (qat_epochs: vgg11 2 on digits, 4 on shapes; resnets 3); "
                    "'fp32 ONNX' is the original model",
        "columns": ["model", "data", "config", "fp32 ONNX KB", "int8 ONNX KB", "container KB", "ratio vs fp32",
                    "acc original", "acc unpacked", "drop (points)", "bits/weight", "order-0 bound", "of which tables",
                    "decode MB/s", "read MB/s", "streams"],
        "rows": rows,
        "notes": ["accuracy of 'unpacked' is the model `lowrank-deploy unpack` rebuilds from the container",
                  "bits/weight = coded weight bits per weight (tables included; a tensor in a pooled stream counts its "
                  "share of the stream), next to the sum of each weight tensor's own empirical order-0 entropy; 'of "
                  "which tables' = the part of bits/weight spent on frequency tables / code lengths; "
                  "'container KB' counts every byte (graph, scales, biases, headers)",
                  "decode MB/s = decoded tensor bytes per second of decoding their streams (tables included); read "
                  "MB/s = all decoded bytes (graph too) per second of whole-file reads (sha256, header checks, CRC32 "
                  "per record); medians of 3 runs"],
    }
