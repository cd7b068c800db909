"""Suite ``finetune``: kd vs svd_training vs lra vs elrt (and no finetune) through the real pipeline.

Full: resnet20 on digits (and shapes when registered), one shared cached baseline and factorization. Quick: the
``tiny`` network on the quick data set, one epoch of everything.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.checkpoint import load_card
from pipeline.suites._common import (QUICK_MODEL, QUICK_OVERRIDES, Table, datasets, pipeline_run, quick_data,
                                     time_files)

METHODS = ["none", "kd", "svd_training", "lra", "elrt"]
# data-aware rows: the same Tucker-2 ranks, factors fitted to each layer's outputs on calibration images
# (factorize.objective=outputs), optionally followed by the layer-wise reconstruction finetune, then kd
DATA_AWARE = {"outputs + none": ["factorize.objective=outputs", "finetune.method=none"],
              "outputs + kd": ["factorize.objective=outputs", "finetune.method=kd"],
              "outputs + layerwise + kd": ["factorize.objective=outputs", "factorize.layerwise_steps=50",
                                           "finetune.method=kd"]}


def bench_finetune(quick: bool = False, root: Path = Path("artifacts")) -> Table:
    """Accuracy, MACs, measured latency and training time of each finetuning method at the same factorization."""
    ep = 1 if quick else 4
    model = QUICK_MODEL if quick else "resnet20"
    rows = []
    for data in ([quick_data(root)] if quick else datasets()):
        common = ["factorize.method=tucker2", "factorize.selector=fixed", "factorize.ratio=0.25",
                  "factorize.min_channels=16", f"finetune.epochs={ep}",
                  "finetune.extra_epochs=0", "benchmark.samples=30"]
        if quick:
            common += QUICK_OVERRIDES
        files: dict[str, Path] = {}
        infos: dict[str, dict] = {}
        for m in METHODS + list(DATA_AWARE):
            extra = list(DATA_AWARE.get(m, [f"finetune.method={m}"]))
            if m == "svd_training":
                extra += ["finetune.svd.phase_epochs=[1,1,1]" if quick else "finetune.svd.phase_epochs=[1,2,1]"]
                # matched MACs: cap each layer's rank at the MAC fraction the Tucker-2 factorization reached
                # spatial form: its per-rank cost k(c+n) is lower than the channel form's, so x8-aligned ranks get
                # closer to the Tucker-2 MAC fraction on 16-channel layers
                extra += [f"finetune.svd.prune_macs={1 / infos['none']['MAC reduction']:.4f}", "finetune.svd.form=spatial"]
            if m == "lra":
                extra += ["finetune.lra.period=20"]
            res, _ = pipeline_run(model, data, root, common + extra + ["export.mobile=false"])
            ft = res.artifact("finetune").metrics
            fz = res.artifact("factorize").metrics
            base = res.artifact("baseline").metrics
            files[m] = res.artifact("export").path("model.onnx")
            infos[m] = {"data": "quick" if quick else data, "method": m, "baseline acc": base["test_accuracy"],
                        "factorized acc (no finetune)": fz["test_accuracy"], "final acc": ft["test_accuracy"],
                        "MAC reduction": round(base["macs"] / ft["macs"], 2), "train s": round(ft.get("seconds") or 0, 1),
                        "int8 acc": res.artifact("quantize").metrics.get("test_accuracy")}
            if m == "lra":
                infos[m]["truncation drop"] = ft.get("truncation_drop")
        shape = load_card(res.artifact("baseline").dir).input_shape
        lat = time_files(files, shape, 5 if quick else 50)
        for m in METHODS + list(DATA_AWARE):
            rows.append({**infos[m], "p50 ms": round(lat[m]["p50"], 3)})
    return {
        "title": f"Finetuning methods on {model} (Tucker-2 ranks 25%, x8 aligned where applicable)",
        "settings": f"{ep} finetune epochs (svd_training: phase epochs), same baseline and factorization for all, "
                    f"latency interleaved in one run, ORT CPU 1 thread",
        "columns": ["data", "method", "baseline acc", "factorized acc (no finetune)", "final acc", "int8 acc",
                    "MAC reduction", "p50 ms", "train s", "truncation drop"],
        "rows": rows,
        "notes": ["svd_training chooses its own ranks (energy pruning after Hoyer sparsification) capped per layer at "
                  "the Tucker-2 MAC fraction (svd.prune_macs, spatial form) to compare at about matched MACs; rank "
                  "alignment to 8 keeps its 16-channel layers above the cap, so it ends with fewer saved MACs",
                  "outputs + ...: the same ranks, each layer's factors fitted to its outputs on 64 training images "
                  "(factorize.objective=outputs); layerwise = 50 Adam steps per factorized layer matching the dense "
                  "layer's outputs before the end-to-end finetune",
                  "lra trains the dense model with periodic low-rank projection, then truncates: 'truncation drop' is the "
                  "accuracy lost at that final truncation"],
    }
