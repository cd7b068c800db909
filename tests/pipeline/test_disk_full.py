"""A write that fails mid-stage (disk full, simulated with RLIMIT_FSIZE: writes past the limit fail with EFBIG just
as they fail with ENOSPC on a full disk) gives a clear error; completed stages stay intact and a rerun resumes."""
from __future__ import annotations

import json
import resource
import signal
import subprocess

from pipeline.runner import run
from tests.helpers.cli import CLI_ENV, cli_command

from .conftest import FAST, fast_config


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_write_failure_keeps_completed_stages_and_resumes(tmp_path):
    root = tmp_path / "art"
    first = run(fast_config(root), upto="baseline", progress=False)
    base = first.artifact("baseline")
    marker = (base.dir / "artifact.json").read_bytes()
    proc = subprocess.run(cli_command(root, "--upto", "factorize", sets=FAST), env=CLI_ENV, preexec_fn=_limit_file_size,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "cannot write" in proc.stderr and str(root) in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    model_root = root / "tiny"
    assert (base.dir / "artifact.json").read_bytes() == marker  # the completed stage is intact
    assert not list(model_root.glob("01-factorize-*")), "no factorize folder, complete-looking or temporary"
    res = run(fast_config(root), upto="factorize", progress=False)
    assert [r.status for r in res.records] == ["cached", "ran"]
    assert json.loads((res.artifact("factorize").dir / "artifact.json").read_text())["stage"] == "factorize"
