"""The rank search (factorize.selector=search) through the stages: its table and time reach the report."""
from __future__ import annotations

import json

from benchmarks.report import validate_report
from benchmarks.report.tables import fmt
from pipeline.config import SearchConfig
from pipeline.runner import run

from .conftest import fast_config

#: the default search (the fast runs pin energy ranks), with smaller probes and every level a candidate
SEARCH = ["factorize.selector=search", "factorize.search.probe_images=64", "factorize.search.min_gain=0.0"]


def test_search_runs_through_the_pipeline_and_the_report_states_its_choice_and_time(e2e_copy):
    _, _, root = e2e_copy
    res = run(fast_config(root.parent, *SEARCH), progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    assert status["baseline"] == "cached" and status["factorize"] == "ran"  # the search reruns factorize onward
    search = res.artifact("factorize").metrics["search"]
    fractions = [lv["fraction"] for lv in search["levels"]]
    # tiny has one layer wide enough to factorize: levels it cannot reach are left off the ladder
    assert fractions and fractions == sorted(fractions, reverse=True)
    default = SearchConfig()
    assert set(fractions) <= set(default.levels) | {default.fallback_level} and fractions[0] == default.fallback_level
    assert all(lv["macs"] > 0 and lv["p50_ms"] > 0 for lv in search["levels"])
    macs = [lv["macs"] for lv in search["levels"]]
    assert macs == sorted(macs, reverse=True) and macs[0] < res.artifact("baseline").metrics["macs"]
    assert 1 <= search["probes"] <= len(fractions) and search["seconds"]["total"] > 0
    report = json.loads(res.artifact("benchmark").path("report.json").read_text())
    validate_report(report)
    assert report["search"]["chosen"] == search["chosen"] and report["search"]["seconds"] == search["seconds"]
    md = res.artifact("benchmark").path("report.md").read_text()
    assert "## Rank search" in md and f"search time {fmt(search['seconds']['total'])} s" in md
    by = {v["name"]: v for v in report["variants"]}
    assert by["finetuned"]["macs"] < by["original"]["macs"]  # a searched level ships, not the dense model


def test_a_search_back_off_is_noted_in_the_report():
    """After a back-off the finetuned/int8 rows are a milder level than the 'factorized' row: the report says so."""
    from pipeline.report_builder import _notes

    tries = [{"fraction": 0.5, "val_accuracy": 0.886, "kept": False}, {"fraction": 0.7, "val_accuracy": 0.894, "kept": True}]
    notes = _notes({}, {"search_backoff": tries})
    assert len(notes) == 1 and "milder level 0.7 of the MACs" in notes[0]
    # every try missed and the searched level itself was kept (the most accurate): nothing to note
    assert _notes({}, {"search_backoff": [{**tries[0], "kept": True}, {**tries[1], "kept": False}]}) == []
    assert _notes({}, {}) == []
