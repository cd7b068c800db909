"""``lowrank-deploy bench`` (:mod:`pipeline.suites`): suite names are validated before any work, tables render as
Markdown, and every suite runs end to end in quick mode (what ``make bench-quick`` runs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.suites import SUITES, md_table, run_bench


def test_unknown_suite_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    with pytest.raises(ConfigError, match="unknown bench suite 'speed'") as e:
        run_bench("speed", out_dir=out, root=tmp_path / "artifacts")
    for name in SUITES:
        assert name in str(e.value)
    assert not out.exists() or not any(out.iterdir())


def test_markdown_table_formats_numbers_and_notes() -> None:
    table = {
        "title": "T", "settings": "S", "columns": ["a", "b", "c"],
        "rows": [{"a": "x", "b": 1.23456, "c": 123456}, {"a": "y", "b": 5000.4}],
        "notes": ["n1"],
    }
    md = md_table(table).splitlines()
    assert md[0] == "### T"
    assert "Settings: S" in md
    assert "| a | b | c |" in md
    assert "| x | 1.235 | 123,456 |" in md
    assert "| y | 5,000 |  |" in md  # a missing cell stays empty rather than failing the whole table
    assert md[-1] == "- n1"


def test_every_suite_is_named_in_the_cli_help(capsys) -> None:
    import pytest

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = capsys.readouterr().out
    for name in SUITES:
        assert name in help_text


def test_every_suite_runs_end_to_end_in_quick_mode(tmp_path: Path) -> None:
    """``bench all --quick``: tiny network, 8x8 inputs, a 240-image data set, a few timing samples, real pipeline runs."""
    out = tmp_path / "bench"
    md = run_bench("all", out_dir=out, quick=True, root=tmp_path / "artifacts")
    assert md == out / "bench.md"
    text = md.read_text()
    for name in SUITES:
        table = json.loads((out / f"{name}.json").read_text())
        assert table["rows"], f"suite {name} produced no rows"
        for row in table["rows"]:
            assert set(row) <= set(table["columns"]) | {"format", "ranks"}, name
        assert table["title"] in text and (out / f"{name}.md").read_text() in text
    factorize = json.loads((out / "factorize.json").read_text())
    assert {r["variant"].split()[0] for r in factorize["rows"]} == {"tucker2", "channel_svd", "spatial_svd", "cp"}
    assert all(r["p50 ms"] > 0 and r["MAC reduction"] > 1 for r in factorize["rows"])
    # the big model's data-aware factorization is timed beside a plain forward pass over its calibration images
    assert factorize["resnet20_data_aware_s"] > factorize["resnet20_calib_forward_s"] > 0
    assert any("data-aware (objective=outputs" in n for n in factorize["notes"])
    finetune = json.loads((out / "finetune.json").read_text())
    assert [r["method"] for r in finetune["rows"]] == ["none", "kd", "svd_training", "lra", "elrt", "outputs + none",
                                                       "outputs + kd", "outputs + layerwise + kd"]
    by = {r["method"]: r for r in finetune["rows"]}
    # matched MACs: the data-aware rows keep the weight-space rows' ranks
    assert by["outputs + kd"]["MAC reduction"] == by["kd"]["MAC reduction"] == by["outputs + layerwise + kd"]["MAC reduction"]
    assert all(0 <= r["final acc"] <= 1 for r in finetune["rows"])
    storage = json.loads((out / "storage.json").read_text())
    assert [r["config"] for r in storage["rows"]] == ["default", "compact"]
    assert all(r["container KB"] < r["fp32 ONNX KB"] for r in storage["rows"])
