"""SIGKILL `lowrank-deploy run` inside different stages; the rerun resumes from the last complete stage and its
deliverables are byte-identical to an uninterrupted run's (which also shows the artifacts are reproducible)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.runner import run
from tests.helpers.cli import CLI_ENV, cli_command
from tests.helpers.ort import session

from .conftest import FAST, fast_config

# model.ort is compared by outputs: ONNX Runtime's converter itself writes different bytes for the same input
# (two conversions of one file differ; the kernel-def table order varies), which is outside this project's control.
DELIVERABLES = ("model.onnx", "model.int8.onnx", "weights.lrdc")


def _kill_during(root: Path, stage_prefix: str, timeout: float = 240.0) -> bool:
    """Start the CLI in a subprocess and SIGKILL it as soon as the temp folder of ``stage_prefix`` exists."""
    proc = subprocess.Popen(cli_command(root, sets=FAST), env=CLI_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    killed = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if list((root / "tiny").glob(f"{stage_prefix}-*.tmp-*")):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return killed


@pytest.mark.slow
@pytest.mark.parametrize("stage_prefix, index", [("00-baseline", 0), ("02-finetune", 2), ("03-export", 3), ("04-quantize", 4)])
def test_kill_and_resume(stage_prefix, index, e2e, tmp_path):
    _, reference = e2e
    root = tmp_path / "art"
    assert _kill_during(root, stage_prefix), f"the run finished before reaching {stage_prefix}"
    model_root = root / "tiny"
    # the killed stage left only a temp folder: never a folder that looks complete
    assert not [p for p in model_root.glob(f"{stage_prefix}-*") if not p.name.count(".tmp-") and (p / "artifact.json").exists()]
    res = run(fast_config(root), progress=False)
    status = [r.status for r in res.records]
    assert status[:index] == ["cached"] * index
    assert status[index] == "ran"
    assert not list(model_root.glob("*.tmp-*")), "stale temp folders are cleaned up"
    for name in DELIVERABLES:
        assert (res.deploy_dir / name).read_bytes() == (reference.deploy_dir / name).read_bytes(), name
    import numpy as np
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    outs = []
    for d in (res.deploy_dir, reference.deploy_dir):
        sess = session(str(d / "model.ort"))
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    assert np.array_equal(outs[0], outs[1])
    for stage in ("baseline", "factorize", "finetune", "quantize", "entropy-code"):
        a, b = res.artifact(stage), reference.artifact(stage)
        assert a.key == b.key and a.sha256 == b.sha256, stage


def test_sigterm_cleans_up_logs_and_resumes(e2e, tmp_path):
    """SIGTERM is not SIGKILL: the CLI exits 143 with a message, run.log says why, no temp folder of the stage nor
    an ``lrd-ort-*`` tool folder is left, and a rerun resumes."""
    _, reference = e2e
    root = tmp_path / "art"
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--model", "tiny", "--data", "digits", "--artifacts", str(root),
           "--no-progress"] + [a for s in FAST for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_root))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    sent = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if list((root / "tiny").glob("02-finetune-*.tmp-*")):
                proc.send_signal(signal.SIGTERM)
                sent = True
                break
            time.sleep(0.02)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sent, "the run finished before reaching finetune"
    assert proc.returncode == 143 and "interrupted" in err, err[-3000:]  # stderr says what happened instead
    assert not list((root / "tiny").glob("*.tmp-*")), "the interrupted stage's temp folder was cleaned up"
    assert not list(tmp_root.glob("lrd-*")), "no temp folder of ours survives"
    log_text = (root / "tiny" / "run.log").read_text()
    assert "run failed" in log_text and "interrupted" in log_text
    res = run(fast_config(root), progress=False)
    assert [r.status for r in res.records][:2] == ["cached", "cached"]
    assert (res.deploy_dir / "model.int8.onnx").read_bytes() == (reference.deploy_dir / "model.int8.onnx").read_bytes()
    assert "run complete" in (root / "tiny" / "run.log").read_text()
