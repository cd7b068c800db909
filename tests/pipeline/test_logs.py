"""Logs of a run whose stderr is not a terminal stay small: one line per epoch and stage, no progress-bar updates."""
from __future__ import annotations

import os
import subprocess
import sys


def test_non_tty_run_writes_little_to_stderr_and_everything_to_run_log(tmp_path):
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--model", "tiny", "--data", "digits", "--artifacts",
           str(tmp_path), "--upto", "finetune", "--set", "baseline.epochs=3", "--set", "finetune.epochs=1",
           "--set", "finetune.extra_epochs=0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(out.stderr.encode()) < 20_000, f"{len(out.stderr)} bytes on stderr"
    assert "\r" not in out.stderr  # no carriage-return progress updates
    assert "baseline epoch 3/3" in out.stderr  # one line per epoch instead
    log = (tmp_path / "tiny" / "run.log").read_text()
    assert "baseline epoch 1/3" in log and "run complete" in log


def test_a_module_loggers_warning_reaches_run_log(tmp_path):
    """The image-folder loader logs under the runner's logger, so its warning is in run.log (and on stderr)."""
    import numpy as np
    from PIL import Image

    from pipeline.config import build_config
    from pipeline.runner import run

    rng = np.random.default_rng(0)
    for c in range(2):
        d = tmp_path / "ds" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(d / f"{i}.png")
    (tmp_path / "ds" / "c1" / "notes.txt").write_text("not an image\n")
    cfg = build_config(None, ["baseline.epochs=1"], model="tiny", data=f"imagefolder:{tmp_path / 'ds'}",
                       artifacts=str(tmp_path / "art"))
    run(cfg, progress=False, upto="baseline")
    log = (tmp_path / "art" / "tiny" / "run.log").read_text()
    assert "WARNING" in log and "notes.txt" in log and "non-image file" in log
