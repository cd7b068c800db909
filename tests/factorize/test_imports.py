"""No import circles inside pipeline.factorize: a static graph of every import (module top and function-local,
``if TYPE_CHECKING:`` blocks excepted) between its modules has no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pipeline.factorize

ROOT = Path(pipeline.factorize.__file__).parent
PACKAGE = "pipeline.factorize"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> set[str]:
    """Names of the project modules ``tree`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in out if m in MODULES}


def _graph() -> dict[str, set[str]]:
    return {name: _imports(ast.parse(path.read_text())) - {name} for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := dfs(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := dfs(n)):
            return found
    return None


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
