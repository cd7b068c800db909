"""One real end-to-end run of all stages on tiny + digits, shared by the pipeline tests (it is the slow part)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.config import build_config
from tests.helpers.trees import tree_digest

# Small but real: a couple of epochs, few timing samples. Everything else is the default pipeline.
FAST = [
    "baseline.epochs=4",
    "baseline.batch_size=16",
    "baseline.lr=0.1",
    "finetune.epochs=1",
    "finetune.extra_epochs=0",  # the extension is tested on its own (test_finetune_extension.py)
    "quantize.calib_size=32",
    "benchmark.samples=8",
    "benchmark.warmup=2",
    "benchmark.html=true",
    # 4 baseline epochs on 1078 digits leave a model whose factorized variants drift ~2 points: the gate is
    # loosened for these shared fast runs (its refusals are tested on their own)
    "benchmark.max_drop=0.15",
    # the default rank search times and probes every level; the shared fast runs take energy ranks instead, and the
    # search through the stages is tested on its own (test_search_stage.py)
    "factorize.selector=energy",
]


def fast_config(root: Path, *extra: str, **top):
    """Config of the shared fast run rooted at ``root``."""
    top.setdefault("model", "tiny")
    top.setdefault("data", "digits")
    return build_config(None, FAST + list(extra), artifacts=str(root), **top)


@pytest.fixture(scope="session")
def e2e(tmp_path_factory):
    """Run the whole pipeline once; returns (config, RunResult)."""
    from pipeline.runner import run

    root = tmp_path_factory.mktemp("e2e")
    cfg = fast_config(root)
    result = run(cfg, progress=False)
    return cfg, result


@pytest.fixture()
def e2e_copy(e2e, tmp_path):
    """A private copy of the shared run's artifacts, for tests that run the pipeline again: ``(config rooted at the
    copy, the shared RunResult, the copy's model folder)``. The shared run itself stays as it was."""
    _, first = e2e
    root = tmp_path / "art" / first.root.name
    shutil.copytree(first.root, root, ignore=shutil.ignore_patterns(".lock"))
    return fast_config(root.parent), first, root


@pytest.fixture(autouse=True)
def _shared_run_unchanged(request):
    """Every test that uses the session-scoped ``e2e`` run must leave its files byte for byte as they were."""
    if "e2e" not in request.fixturenames:
        yield
        return
    _, first = request.getfixturevalue("e2e")
    before = tree_digest(first.root)
    yield
    after = tree_digest(first.root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"this test changed the shared e2e run ({changed[:5]}); use the e2e_copy fixture"
