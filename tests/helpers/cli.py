"""Running the command line as the user runs it, in a subprocess: :func:`cli_command` + :data:`CLI_ENV`. (In-process
tests call :func:`pipeline.cli.main` with pytest's ``capsys``.)"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

#: Environment of a CLI subprocess: one thread (shared 2-core machines).
CLI_ENV = dict(os.environ, OMP_NUM_THREADS="1")


def cli_command(root: str | Path, *args: str, sets: Sequence[str] = (), model: str = "tiny",
                data: str = "digits") -> list[str]:
    """``python -m pipeline.cli run --model M --data D --artifacts ROOT --no-progress ARGS --set S ...``."""
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--model", model, "--data", data, "--artifacts", str(root),
           "--no-progress", *args]
    for s in sets:
        cmd += ["--set", s]
    return cmd

