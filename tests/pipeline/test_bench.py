"""``lowrank-deploy bench``: suite names are validated before any work, tables render as Markdown."""
from __future__ import annotations

from pathlib import Path

from pipeline.bench import SUITES, _md_table
from pipeline.cli import main


def test_unknown_suite_is_a_clear_error_and_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench"
    code = main(["bench", "speed", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert "unknown bench suite 'speed'" in err
    for name in SUITES:
        assert name in err
    assert not out.exists() or not any(out.iterdir())


def test_markdown_table_formats_numbers_and_notes() -> None:
    table = {
        "title": "T", "settings": "S", "columns": ["a", "b", "c"],
        "rows": [{"a": "x", "b": 1.23456, "c": 123456}, {"a": "y", "b": 5000.4}],
        "notes": ["n1"],
    }
    md = _md_table(table).splitlines()
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
