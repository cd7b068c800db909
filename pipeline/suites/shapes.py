"""Suite ``shapes``: accuracy under compression (issue 7's table).

Full: resnet20 and resnet56 on ``shapes``: baseline, then ~3x and ~5x fewer MACs (budget selector) before and after
distillation. Quick: the ``tiny`` network on the quick data set.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.suites._common import QUICK_MODEL, QUICK_OVERRIDES, Table, pipeline_run, quick_data

# 4.75x, not 5x: with the stem dense and ranks aligned to 8, resnet20 cannot go below ~0.201 of its MACs.
BUDGETS = [3.0, 4.75]


def bench_shapes(quick: bool = False, root: Path = Path("artifacts")) -> Table:
    """Baselines, then ~3x and ~5x fewer MACs before/after KD.

    Ranks come from the ``budget`` selector (greedy by measured validation sensitivity) at a whole-model MAC target,
    so the two budgets differ only in that target; finetuning is the default ``kd`` for the default epochs. The
    pipeline stops after ``finetune`` (quantize/export are measured by the other suites).
    """
    models = [QUICK_MODEL] if quick else ["resnet20", "resnet56"]
    data = quick_data(root) if quick else "shapes"
    # the tiny network's 1x1 output cannot reach 4.75x: its quick budgets are what it can reach
    budgets = [1.5, 2.0] if quick else BUDGETS
    rows = []
    for model in models:
        for red in budgets:
            # x8 ranks as the settings line says (align=0 would take the host's block: x16 on AVX-512, where the quick
            # net cannot reach its budgets)
            over = ["factorize.selector=budget", f"factorize.budget.macs={1 / red:.4f}", "factorize.min_channels=16",
                    "factorize.min_mac_saving=0.0", "factorize.align=8"]
            if quick:
                over += QUICK_OVERRIDES
            res, _ = pipeline_run(model, data, root, over, upto="finetune")
            base = res.artifact("baseline").metrics
            fz = res.artifact("factorize").metrics
            ft = res.artifact("finetune").metrics
            rows.append({
                "model": model, "target MAC reduction": red, "MAC reduction": round(fz["mac_reduction"], 2),
                "baseline acc": base["test_accuracy"], "factorized acc": fz["test_accuracy"],
                "after KD acc": ft["test_accuracy"],
                "gap to baseline (points)": round(100 * (base["test_accuracy"] - ft["test_accuracy"]), 2),
                "baseline train s": round(base.get("train_seconds") or 0, 1), "KD s": round(ft.get("seconds") or 0, 1),
            })
    return {
        "title": f"Accuracy under compression on `{'quick' if quick else data}` (test split)",
        "settings": "default baseline budget; Tucker-2, ranks by the budget selector at a whole-model MAC target "
                    "(x8 aligned, layers >= 16 channels, stem kept dense); default KD finetune",
        "columns": ["model", "target MAC reduction", "MAC reduction", "baseline acc", "factorized acc", "after KD acc",
                    "gap to baseline (points)", "baseline train s", "KD s"],
        "rows": rows,
        "notes": ["'gap to baseline' is what plain distillation leaves for better training methods to close"],
    }
