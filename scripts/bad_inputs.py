"""Hand every bad input of ``scripts/bad_input_cases.py`` to the CLI and write the table ``docs/bad-inputs.md``.

One finished run (tiny on shapes, one epoch) is made first; each case then gets a fresh copy of its artifacts
folder, runs ``python -m pipeline.cli ...`` in a subprocess (as a user would), and records the exit code, the first
error line (or the first warning of an accepted input), and whether the published deliverables of the finished run
(``tiny/deploy``) are byte for byte what they were. Cases that need stages run only the baseline stage, of another
model or dataset, so the whole table takes minutes.

Usage: ``python scripts/bad_inputs.py [--out docs/bad-inputs.md] [--only NAME ...] [--keep DIR]``
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from bad_input_cases import CASES, FINISHED, Case, Ctx, by_name  # noqa: E402

#: seconds one case may take (the user-code timeout cases wait 2 s; a hang would show as rc 124)
CASE_TIMEOUT_S = 240


@dataclass
class Row:
    """One line of the table."""

    case: Case
    rc: int
    message: str
    intact: bool
    seconds: float

    @property
    def ok(self) -> bool:
        """The outcome is the expected one: a clear exit-2 error, or success for a valid input; deploy/ intact."""
        want = 2 if self.case.expect == "refused" else 0
        return self.rc == want and self.intact and "Traceback" not in self.message


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONWARNINGS", None)
    return env


def cli(args: list[str], timeout: float = CASE_TIMEOUT_S, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline.cli ARGS`` in a subprocess (stdin closed, one thread); rc 124 when it times out."""
    try:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                              timeout=timeout, env=_env(), cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return subprocess.CompletedProcess(e.cmd, 124, "", out + f"\n(timed out after {timeout:g} s)")


def make_finished_run(art: Path, sets: tuple[str, ...] = FINISHED) -> Path:
    """Run the whole pipeline for tiny on shapes into ``art``; returns ``art/tiny/deploy``."""
    cmd = ["run", "--model", "tiny", "--data", "shapes", "--artifacts", str(art), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    done = cli(cmd, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the finished run failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return art / "tiny" / "deploy"


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes under ``folder`` (symlinks followed), plus the link target."""
    h = hashlib.sha256()
    if folder.is_symlink():
        h.update(os.readlink(folder).encode())
    if not folder.exists():
        return "missing"
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def first_line(rc: int, stderr: str) -> str:
    """The line that tells the user what happened: ``error: ...``, a traceback's last line, or the first warning."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if "Traceback (most recent call last):" in stderr:
        return "Traceback: " + (lines[-1] if lines else "")
    for prefix in ("error:", "usage:"):
        hit = next((ln for ln in lines if ln.startswith(prefix)), None)
        if hit and prefix == "usage:":
            hit = next((ln for ln in lines if ": error:" in ln), hit)
        if hit:
            return hit
    warn = next((ln for ln in lines if ln.startswith("[WARNING]")), None)
    if warn:
        return warn
    if rc == 0:
        return "(ran; no warning)"
    return lines[-1] if lines else "(no output)"


def run_case(case: Case, finished_art: Path, work: Path) -> Row:
    """Run one case against a fresh copy of the finished run's artifacts folder ``finished_art``."""
    art = work / "art"
    shutil.copytree(finished_art, art, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
    deploy = art / "tiny" / "deploy"
    before = tree_digest(deploy)
    files = work / "files"
    files.mkdir()
    t0 = time.monotonic()
    args = case.build(Ctx(work=files, art=art))
    done = cli(args, cwd=files)
    seconds = time.monotonic() - t0
    # temp paths would make every regenerated table differ: name the folders instead
    message = first_line(done.returncode, done.stderr).replace(str(files), "<work>").replace(str(art), "<artifacts>")
    return Row(case, done.returncode, message, tree_digest(deploy) == before, seconds)


def run_cases(cases: list[Case], finished_art: Path, scratch: Path) -> list[Row]:
    """Every case in its own folder under ``scratch``, each against a fresh copy of ``finished_art``."""
    rows = []
    for i, case in enumerate(cases):
        work = scratch / f"case{i:03d}"
        work.mkdir(parents=True)
        row = run_case(case, finished_art, work)
        print(f"[{i + 1}/{len(cases)}] rc {row.rc} {'ok ' if row.ok else 'BAD'} {case.name}: {row.message[:120]}",
              file=sys.stderr, flush=True)
        rows.append(row)
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _cell(text: str, limit: int = 260) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return text.replace("|", "\\|").replace("`", "'")


def render(rows: list[Row], scratch_hint: str = "") -> str:
    """The Markdown page: what was run, the counts, and the table."""
    by_rc: dict[int, int] = {}
    for r in rows:
        by_rc[r.rc] = by_rc.get(r.rc, 0) + 1
    counts = ", ".join(f"exit {rc}: {n}" for rc, n in sorted(by_rc.items()))
    bad = [r for r in rows if not r.ok]
    issue = sum(r.case.source == "issue" for r in rows)
    out = [
        "# Bad inputs: what the CLI does with them",
        "",
        "Generated by `python scripts/bad_inputs.py` (cases in `scripts/bad_input_cases.py`); rerun it after changing",
        "how an input is checked. Each case ran `python -m pipeline.cli ...` against a fresh copy of one finished run",
        "(model `tiny`, dataset `shapes`, one epoch), so every refusal below happened with published deliverables in",
        "place. *Artifacts intact*: that run's `tiny/deploy/` (the link and every file) is byte for byte what it was.",
        "Cases that need a stage run only the baseline stage (`--upto baseline`) of another model or dataset.",
        "",
        f"{len(rows)} cases ({issue} from the hardening issue, {len(rows) - issue} more); {counts}. "
        f"Outcome as expected (exit 2 with a message for a refused input, exit 0 for a valid one, deliverables "
        f"intact, no traceback): {len(rows) - len(bad)} of {len(rows)}.",
        "",
        "Not in the table: a full disk and kills during a run (they need a filesystem or a signal at a chosen moment;",
        "`tests/pipeline/test_disk_full.py` and `tests/pipeline/test_interrupt.py` cover them).",
        "",
        "| case | from | expected | exit code | message | artifacts intact |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(f"| {_cell(r.case.name, 80)} | {r.case.source} | {r.case.expect} | {r.rc} | {_cell(r.message)} | "
                   f"{'yes' if r.intact else '**no**'} |")
    if bad:
        out += ["", "Not as expected: " + "; ".join(f"{r.case.name} (exit {r.rc})" for r in bad) + "."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Make the finished run, run the cases, write the table; exit 1 if any case is not as expected."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "bad-inputs.md"), help="the Markdown table to write")
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    ap.add_argument("--keep", help="reuse (or make) the finished run in this folder instead of a temp one")
    args = ap.parse_args(argv)
    cases = by_name(args.only) if args.only else CASES
    with tempfile.TemporaryDirectory(prefix="lrd-bad-inputs-") as td:
        scratch = Path(td)
        finished = Path(args.keep) if args.keep else scratch / "finished"
        if not (finished / "tiny" / "deploy").is_dir():
            t0 = time.monotonic()
            make_finished_run(finished)
            print(f"finished run made in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        rows = run_cases(cases, finished, scratch / "cases")
    Path(args.out).write_text(render(rows))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
