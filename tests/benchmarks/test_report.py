"""Report: schema validation (good and broken reports), Markdown headline, self-contained HTML with embedded plots."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from benchmarks.report import render_markdown, validate_report, write_report
from pipeline.errors import ValidationError


def _lat(p50: float) -> dict:
    return {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50 * 1.05, "min": p50 * 0.9, "samples": 60}


def _report() -> dict:
    energy = {"energy_uj": 3.0, "breakdown_uj": {"compute": 2.0, "sram": 0.5, "dram": 0.5}, "profile": {"name": "x"}}
    variants = [
        {"name": "original", "accuracy": 0.97, "size_bytes": 400_000, "macs": 40_000_000, "params": 100_000,
         "latency_ms": _lat(2.0), "energy": energy, "file": "00-baseline/original.onnx"},
        {"name": "factorized", "accuracy": 0.90, "size_bytes": 120_000, "macs": 9_000_000, "params": 30_000,
         "latency_ms": _lat(0.9), "energy": energy, "file": "05-export/factorized.onnx"},
        {"name": "finetuned", "accuracy": 0.965, "size_bytes": 120_000, "macs": 9_000_000, "params": 30_000,
         "latency_ms": _lat(0.9), "energy": energy, "file": "05-export/model.onnx"},
        {"name": "int8", "accuracy": 0.96, "size_bytes": 35_000, "macs": 9_000_000, "params": 30_000,
         "latency_ms": _lat(0.8), "energy": energy, "file": "03-quantize/model.int8.onnx"},
        {"name": "unpacked", "accuracy": 0.96, "size_bytes": 25_000, "macs": 9_000_000, "params": 30_000,
         "latency_ms": _lat(0.8), "file": "04-entropy-code/weights.lrdc"},
    ]
    return {
        "schema_version": 1, "model": "tiny", "dataset": "digits",
        "settings": {"target": "cpu", "threads": 1, "graph_optimization": "all", "batch": 1, "samples": 60},
        "headline": {"smaller": 16.0, "faster": 2.5, "acc_from": 0.97, "acc_to": 0.96, "basis": "test"},
        "variants": variants,
        "container": {"file": "weights.lrdc", "size_bytes": 25_000, "coder": "zstd"},
        "layers": [{"name": "features.3", "status": "factorized", "ranks": [8, 16]},
                   {"name": "features.0", "status": "skipped", "reason": "first layer"}],
        "node_profile": [{"node": "/features/features.3/features.3.0/Conv", "layer": "features.3", "total_us": 300.0,
                          "mean_us": 15.0, "calls": 20, "share": 0.6},
                         {"node": "/classifier/Gemm", "layer": "classifier", "total_us": 200.0, "mean_us": 10.0,
                          "calls": 20, "share": 0.4}],
        "mobile": {"summary": {"NNAPI": {"supported_pct_fixed_shapes": 100.0, "unsupported_ops": []}}},
        "stages": [{"stage": "baseline", "key": "abc", "sha256": "00"}],
    }


def _search() -> dict:
    """A rank-search section as the factorize stage's metrics hold it (SearchResult.summary) plus the back-off."""
    return {"levels": [{"fraction": 0.5, "macs": 20_000_000, "p50_ms": 1.2, "speedup": 1.6, "probe_val": 0.96,
                        "kept": True, "why": "probe val 0.9600 vs original 0.9700: within probe_drop 0.03"},
                       {"fraction": 0.25, "macs": 10_000_000, "p50_ms": 1.19, "speedup": 1.61, "probe_val": None,
                        "kept": False, "why": "not measurably faster than a milder level"}],
            "chosen": 0, "chosen_fraction": 0.5, "fallback_fractions": [], "probes": 1,
            "seconds": {"ladder": 3.5, "decompose": 1.25, "latency": 4.0, "probes": 9.0, "total": 17.75},
            "backoff": []}


def test_search_section_states_the_choice_and_the_search_time(tmp_path: Path) -> None:
    rep = {**_report(), "search": _search()}
    validate_report(rep)
    paths = write_report(rep, tmp_path)
    md = paths["md"].read_text()
    assert "## Rank search" in md and "search time 17.75 s" in md and "1.60x faster measured" in md
    rows = [l for l in md.splitlines() if l.startswith("| 0 | 0.5 |") or l.startswith("| 1 | 0.25 |")]
    assert len(rows) == 2 and "| yes | yes |" in rows[0] and "| no |" in rows[1]
    page = paths["html"].read_text()
    assert "<h2>Rank search</h2>" in page and "search time 17.75 s" in page
    assert "## Rank search" not in render_markdown(_report())  # no search ran: no section
    tries = [{"fraction": 0.25, "val_accuracy": 0.9, "kept": False}, {"fraction": 0.5, "val_accuracy": 0.96, "kept": True}]
    md = render_markdown({**_report(), "search": {**_search(), "backoff": tries}})
    assert "finetune backed off 1 time(s) to a milder level, shipped level 0.5" in md


def test_weight_widths_line_states_the_fit(tmp_path: Path) -> None:
    from pipeline.report_builder import weight_bits_summary

    wb = {"mode": "auto", "qmax": 127, "avg_bits": 3.5, "budget": None, "accuracy": 0.96,
          "bits": {"/a/Conv": 8, "/b/Conv": 3, "/c/Conv": 3, "/d/Gemm": 4},
          "fit": {"floor": 0.955, "base_accuracy": 0.962, "step": 12, "path_length": 18, "probes": 18,
                  "tries": [{"step": 9, "accepted": True}, {"step": 13, "accepted": False}], "seconds": 4.5,
                  "path_seconds": 3.0}}
    summary = weight_bits_summary(wb)
    assert summary["widths"] == {"8": 1, "4": 1, "3": 2} and "path_seconds" not in summary["fit"]
    rep = {**_report(), "quantize": {"weight_bits": summary}}
    validate_report(rep)
    paths = write_report(rep, tmp_path)
    line = ("Weight widths (auto): 3.5 bits per weight on average (1 layer(s) at 8 bits, 1 layer(s) at 4 bits, "
            "2 layer(s) at 3 bits); fitted to the validation accuracy floor 0.955 (8-bit weights 0.962, shipped "
            "0.96): 12 of 18 narrowings kept, 18 layer probes and 2 checks in 4.5 s.")
    assert line in paths["md"].read_text() and line in paths["html"].read_text()
    fit = {**wb["fit"], "check_drop": 0.005, "check_base": 0.991, "check_accuracy": 0.987}
    md = render_markdown({**_report(), "quantize": {"weight_bits": weight_bits_summary({**wb, "fit": fit})}})
    assert ("cut where the accuracy on validation and training images stays within 0.005 of the 8-bit weights' "
            "0.991 (shipped 0.987; validation accuracy 0.962 at 8 bits, 0.96 shipped): 12 of 18 narrowings kept") in md
    md = render_markdown({**_report(), "quantize": {"weight_bits": weight_bits_summary({**wb, "grid": "layer"})}})
    assert "Weight widths (auto, one step per layer): 3.5 bits per weight on average" in md
    kept = weight_bits_summary({"mode": "auto", "bits": {"/a/Conv": 8}, "fit": {"kept_8bit": "no labels"}})
    assert "Weight widths: 8 bits kept (no labels)." in render_markdown({**_report(), "quantize": {"weight_bits": kept}})
    assert "Weight widths" not in render_markdown(_report()) and weight_bits_summary(None) is None


def test_valid_report_passes_and_files_are_written(tmp_path: Path) -> None:
    rep = _report()
    validate_report(rep)
    paths = write_report(rep, tmp_path)
    assert set(paths) == {"json", "md", "html"} and all(p.is_file() for p in paths.values())
    back = json.loads(paths["json"].read_text())
    assert back["schema_version"] == 1 and [v["name"] for v in back["variants"]] == [v["name"] for v in rep["variants"]]
    validate_report(back)


def test_markdown_starts_with_headline_and_has_tables() -> None:
    md = render_markdown(_report())
    first = md.splitlines()[0]
    assert first == "# 16.0x smaller, 2.50x faster, accuracy 97.00% -> 96.00%"
    for section in ("## Variants", "## Container", "## Layers", "## Settings", "## Per-layer latency"):
        assert section in md
    table = [l for l in md.splitlines() if l.startswith("| original |")]
    assert len(table) == 1 and "2.000" in table[0] and "2.200" in table[0] and "2.600" in table[0]


def test_html_is_self_contained_with_embedded_plots(tmp_path: Path) -> None:
    page = write_report(_report(), tmp_path)["html"].read_text()
    images = re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # accuracy vs latency, accuracy vs size, per-layer latency, energy breakdown
    assert len(images) == 4 and all(len(b) > 1000 for b in images)
    # Outside the base64 payloads (which could contain any letters) nothing may point elsewhere.
    rest = re.sub(r"(data:image/png;base64,)[A-Za-z0-9+/=]+", r"\1", page)
    assert "http" not in rest and "//" not in rest.replace("<!DOCTYPE", "")
    assert not re.search(r'(src|href)="(?!data:)', rest)
    assert "<script" not in rest and "<link" not in rest and "@import" not in rest


def test_html_without_optional_sections(tmp_path: Path) -> None:
    rep = _report()
    for k in ("layers", "node_profile", "mobile", "stages"):
        del rep[k]
    for v in rep["variants"]:
        v.pop("energy", None)
    page = write_report(rep, tmp_path, html=True)["html"].read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2
    assert set(write_report(rep, tmp_path / "nohtml", html=False)) == {"json", "md"}


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda r: r.pop("variants"), "report.variants: missing"),
        (lambda r: r.update(schema_version=2), "report.schema_version"),
        (lambda r: r["variants"][0].update(accuracy=1.5), "report.variants[0].accuracy"),
        (lambda r: r["variants"][1]["latency_ms"].update(p90=0.1), "percentiles out of order"),
        (lambda r: r["variants"][2].update(name="original"), "duplicate variant name"),
        (lambda r: r["variants"][3].update(size_bytes=-1), "report.variants[3].size_bytes"),
        (lambda r: r["variants"][3].update(macs=1.5), "report.variants[3].macs"),
        (lambda r: r["headline"].update(faster=float("nan")), "report.headline.faster"),
        (lambda r: r["container"].pop("size_bytes"), "report.container.size_bytes"),
        (lambda r: r.update(layers="not a list"), "report.layers"),
        (lambda r: r.update(search={**_search(), "chosen": 5}), "report.search.chosen"),
        (lambda r: r.update(search={**_search(), "seconds": {"total": -1}}), "report.search.seconds"),
    ],
)
def test_broken_reports_fail(breakage, expected: str, tmp_path: Path) -> None:
    rep = copy.deepcopy(_report())
    breakage(rep)
    with pytest.raises(ValidationError, match=re.escape(expected)):
        validate_report(rep)
    with pytest.raises(ValidationError):
        write_report(rep, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing that looks like a report is left behind


def test_all_problems_are_listed() -> None:
    rep = _report()
    rep["model"] = ""
    rep["variants"][0]["accuracy"] = -0.1
    rep["variants"][4]["params"] = True
    with pytest.raises(ValidationError) as e:
        validate_report(rep)
    msg = str(e.value)
    assert "3 problem(s)" in msg and "report.model" in msg and "variants[0].accuracy" in msg and "variants[4].params" in msg


def test_missing_accuracy_is_allowed_as_null(tmp_path: Path) -> None:
    rep = _report()
    for v in rep["variants"]:
        v["accuracy"] = None
    rep["headline"].update(acc_from=None, acc_to=None)
    paths = write_report(rep, tmp_path)
    assert "accuracy n/a -> n/a" in paths["md"].read_text().splitlines()[0]


def test_node_profile_is_grouped_by_factorization_layer() -> None:
    rep = _report()
    rep["layers"] = [{"name": "features.2.0", "status": "dense"}, {"name": "features.4.0", "status": "factorized"},
                     {"name": "layer1.0.conv1"}, {"name": "layer1.0.conv2"}]
    rows = [("features.4.0.0", 10.0), ("features.4.0.1", 30.0),  # factorized Sequential -> its layer
            ("features.2.2", 25.0),                              # fused conv+relu named after the relu -> the conv
            ("layer1.0.relu", 5.0),                              # two convs in the block: ambiguous, left alone
            ("(runtime)", 1.0)]
    rep["node_profile"] = [{"node": f"/{n}/X", "layer": n, "total_us": us * 20, "mean_us": us} for n, us in rows]
    md = render_markdown(rep)
    section = md.split("## Per-layer latency")[1].split("##")[0]
    table = [l for l in section.splitlines() if l.startswith("| ") and l != "| layer | ms per run |"]
    assert table == ["| features.4.0 | 0.0400 |", "| features.2.0 | 0.0250 |", "| layer1.0.relu | 0.0050 |",
                     "| (runtime) | 0.0010 |"]


def test_roofline_section_lists_every_profile(tmp_path: Path) -> None:
    rep = _report()
    for v in rep["variants"]:
        v.setdefault("energy", {})["roofline"] = {"latency_ms": 0.5}
        v["roofline"] = {"cortex-a78-core": {"latency_ms": 0.25}, "cortex-a53-board": {"latency_ms": 2.0}}
    md = write_report(rep, tmp_path)["md"].read_text()
    section = md.split("## Roofline estimates")[1].split("\n## ")[0]
    assert "roofline ms cortex-a78-core" in section and "roofline ms cortex-a53-board" in section
    assert "| original | 2.000 | 0.5 | 0.25 | 2 |" in section
