"""A static view of the project's imports, for layout tests: which project modules each source file imports at module
top and which it imports inside functions. ``if TYPE_CHECKING:`` blocks are skipped (never executed at run time)."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "exporters", "benchmarks")


def module_name(path: Path) -> str:
    """``pipeline/finetune/__init__.py`` -> ``pipeline.finetune``."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    """Every ``.py`` file under the scanned packages, by dotted module name."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


@dataclass
class ModuleImports:
    """The project modules one file imports: at module top (``top``) and inside functions (``local``, with line)."""

    top: set[str] = field(default_factory=set)
    local: list[tuple[int, str]] = field(default_factory=list)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, modules: set[str], current: str, is_pkg: bool) -> set[str]:
    """The project modules an import statement needs: ``from a.b import c`` needs ``a.b.c`` when that is a module,
    else ``a.b``; relative imports are resolved against ``current``."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    base = node.module or ""
    if node.level:
        pkg = current.split(".") if is_pkg else current.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join([*pkg, *([base] if base else [])])
    if base.split(".")[0] not in PACKAGES:
        return set()
    out = set()
    for a in node.names:
        sub = f"{base}.{a.name}"
        out.add(sub if sub in modules else base)
    return out


def scan(path: Path, modules: set[str]) -> ModuleImports:
    """The project imports of one file."""
    name = module_name(path)
    is_pkg = path.name == "__init__.py"
    found = ModuleImports()

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for t in _targets(node, modules, name, is_pkg):
                if in_function:
                    found.local.append((node.lineno, t))
                else:
                    found.top.add(t)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    found.top.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports at module top (only modules that exist in the tree)."""
    files = source_files()
    mods = set(files)
    return {n: {m for m in scan(p, mods).top if m in mods} for n, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
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


def all_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (each one is at least one circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out
