"""No import circles inside pipeline.factorize: a static graph of every import (module top and function-local,
``if TYPE_CHECKING:`` blocks excepted) between its modules has no cycle. (tests/test_layout.py checks the module-top
imports of the whole tree; this package is held to the stricter rule.)"""
from __future__ import annotations

from tests.helpers.imports import find_cycle, scan, source_files

PACKAGE = "pipeline.factorize"


def _graph() -> dict[str, set[str]]:
    files = {n: p for n, p in source_files().items() if n == PACKAGE or n.startswith(PACKAGE + ".")}
    mods = set(source_files())
    out = {}
    for n, p in files.items():
        s = scan(p, mods)
        out[n] = {m for m in s.top | {m for _, m in s.local} if m in files} - {n}
    return out


_cycle = find_cycle


def test_the_scan_sees_the_known_edges() -> None:
    g = _graph()
    assert "pipeline.factorize.plan" in g["pipeline.factorize.swap"]
    assert "pipeline.factorize.plan" in g["pipeline.factorize.budget"]
    assert "pipeline.factorize.plan" in g["pipeline.factorize.onnx_graph"]
    assert "pipeline.factorize.formats.base" in g["pipeline.factorize.formats.tucker2"]


def test_no_import_circle_in_factorize() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_budget_and_swap_do_not_import_each_other() -> None:
    g = _graph()
    assert "pipeline.factorize.swap" not in g["pipeline.factorize.budget"]
    assert "pipeline.factorize.budget" not in g["pipeline.factorize.swap"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
