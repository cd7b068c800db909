"""The tree's layout rules, checked statically over pipeline/, exporters/ and benchmarks/:

* no import circle among module-top imports (``if TYPE_CHECKING:`` blocks excepted);
* project modules are imported at module top, except the named, deliberately lazy imports in :data:`ALLOWED_LAZY`;
* no source file over 600 lines;
* no reference to notes users do not have (the method and benchmarking notes live in ``docs/``).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.imports import REPO, all_cycles, find_cycle, import_graph, scan, source_files

#: Function-local imports of project modules that are lazy on purpose: ``(file, imported module)``.
ALLOWED_LAZY: dict[tuple[str, str], str] = {
    # The CLI imports what a subcommand needs inside it, so `list` and `unpack` start without torch and onnx.
    **{("pipeline/cli.py", m): "fast CLI start-up" for m in (
        "pipeline.runner", "pipeline.entropy.container", "pipeline.suites", "pipeline.config")},
    # numba compiles the rANS kernels on first import (seconds): only a coder that actually runs loads them.
    ("pipeline/entropy/coders/rans16.py", "pipeline.entropy.rans_kernels"): "numba compilation",
    ("pipeline/entropy/coders/table.py", "pipeline.entropy.rans_kernels"): "numba compilation",
}

#: Function-local project imports in files other work owns right now, each to be moved to module top by its owner
#: (then removed from here). Not a licence: a new entry needs a reason like those in ALLOWED_LAZY.
PENDING_LAZY: set[tuple[str, str]] = {
    ("pipeline/config.py", "benchmarks.targets"),
    ("pipeline/models/__init__.py", "pipeline.models.onnx"),
    ("pipeline/models/__init__.py", "pipeline.models.ort_graph"),
}

MAX_LINES = 600

#: Notes that are not in this repository, so nothing may point at them.
MISSING_NOTES = ("PERFORMANCE" + ".md", "METHODS" + ".md", "DESIGN" + ".md", "RELIABILITY" + ".md", "../" + "shared")

#: Files other work owns right now that still cite a missing note (their owners point them at docs/).
PENDING_REFERENCES = {
}

TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".yaml", ".yml", ".cfg", ".c", ".h", ".sh", ".json", ".html"}


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _lazy_imports() -> set[tuple[str, str]]:
    files = source_files()
    mods = set(files)
    return {(_rel(p), m) for p in files.values() for _, m in scan(p, mods).local}


def _repo_text_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored text files (what a checkout or a commit holds)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    paths = [REPO / p for p in out if p]
    return [p for p in paths if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name == "Makefile")]


def test_no_import_circle() -> None:
    cycles = all_cycles(import_graph())
    assert not cycles, "import circles (strongly connected modules): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_scan_sees_module_top_edges() -> None:
    g = import_graph()
    assert "pipeline.finetune.job" in g["pipeline.finetune.methods.kd"]
    assert "pipeline.ort_session" in g["pipeline.models.ort_graph"]
    assert "pipeline.finetune" not in g["pipeline.finetune.methods.kd"]  # the circle this package used to have


def test_the_cycle_finders_find_a_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(g) == ["a", "b", "c", "a"]
    assert all_cycles(g) == [["a", "b", "c"]]
    assert find_cycle({"a": {"b"}, "b": set()}) is None and all_cycles({"a": {"b"}, "b": set()}) == []


def test_function_local_project_imports_are_the_named_lazy_ones() -> None:
    unexpected = sorted(_lazy_imports() - set(ALLOWED_LAZY) - PENDING_LAZY)
    assert not unexpected, ("function-local imports of project modules (move them to module top, or name them in "
                            f"ALLOWED_LAZY with the reason): {unexpected}")


def test_every_allowed_lazy_import_still_exists() -> None:
    stale = sorted(set(ALLOWED_LAZY) - _lazy_imports())
    assert not stale, f"ALLOWED_LAZY names imports that are gone; remove them: {stale}"


@pytest.mark.parametrize("path", sorted(source_files().values()), ids=_rel)
def test_source_file_is_at_most_600_lines(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{_rel(path)} has {n} lines; split it by job (limit {MAX_LINES})"


def test_no_reference_to_missing_notes() -> None:
    me = Path(__file__).resolve()
    found = []
    for p in _repo_text_files():
        if p.resolve() == me or _rel(p) in PENDING_REFERENCES:
            continue
        text = p.read_text(errors="replace")
        found += [f"{_rel(p)}: {note}" for note in MISSING_NOTES if note in text]
    assert not found, f"references to notes not in this repository (point them at docs/): {found}"


def test_the_reference_scan_reads_the_docs() -> None:
    names = {_rel(p) for p in _repo_text_files()}
    assert {"README.md", "docs/methods.md", "docs/benchmarking.md", "pipeline/ort_session.py"} <= names
