"""The finetune extension (finetune.extra_epochs): more KD epochs only when the first training misses max_drop."""
from __future__ import annotations

import json

from pipeline.report_builder import _notes
from pipeline.runner import run

from .conftest import fast_config

#: a harsh factorization of tiny (a tenth of the energy) that one epoch cannot bring back within a zero budget
HARSH = ["factorize.energy=0.1", "finetune.extra_epochs=2"]


def test_a_missed_budget_trains_the_extra_epochs_and_never_loses_accuracy(e2e_copy):
    _, first, root = e2e_copy
    res = run(fast_config(root.parent, *HARSH, "benchmark.max_drop=0.0"), progress=False, upto="finetune")
    ft = res.artifact("finetune")
    base_val = res.artifact("baseline").metrics["val_accuracy"]
    ext = ft.metrics["extension"]
    assert base_val - ext["val_before"] > 0  # the configured epoch missed the zero budget, so it extended
    assert ext["epochs"] == 2 and ext["val_after"] >= ext["val_before"]  # kd keeps its start when no epoch beats it
    assert ft.metrics["val_accuracy"] == ext["val_after"] and ft.metrics["best_val"] >= ext["val_after"]
    hist = json.loads(ft.path("history.json").read_text())
    assert len(hist["epochs"]) == 1 and len(hist["extension"]["epochs"]) == 2  # both trainings are recorded
    # the first epoch's data order is not replayed: the extension runs with another seed
    assert hist["extension"]["epochs"][0]["loss"] != hist["epochs"][0]["loss"]


def test_a_met_budget_costs_no_extra_epochs_and_zero_turns_it_off(e2e_copy):
    _, _, root = e2e_copy
    met = run(fast_config(root.parent, *HARSH, "benchmark.max_drop=1.0"), progress=False, upto="finetune")
    assert "extension" not in met.artifact("finetune").metrics
    hist = json.loads(met.artifact("finetune").path("history.json").read_text())
    assert "extension" not in hist and len(hist["epochs"]) == 1
    off = run(fast_config(root.parent, "factorize.energy=0.1", "finetune.extra_epochs=0", "benchmark.max_drop=0.0"),
              progress=False, upto="finetune")
    assert "extension" not in off.artifact("finetune").metrics


def test_the_report_notes_an_extension():
    ext = {"epochs": 12, "val_before": 0.873, "val_after": 0.894, "seconds": 200.0}
    notes = _notes({}, {"extension": ext})
    assert len(notes) == 1 and "12 more KD epochs" in notes[0] and "0.8730" in notes[0] and "0.8940" in notes[0]

