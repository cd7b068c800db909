"""Runner: stage keys, cache reuse, partial reruns, --only/--from, lock, incomplete folders never reused."""
from __future__ import annotations

import shutil

import pytest

from pipeline.config import build_config
from pipeline.errors import ConfigError, LockError, PipelineError
from pipeline.runner import run, run_lock, stage_key, input_fingerprint
from pipeline.stage_api import STAGES

from .conftest import fast_config


def test_stage_key_depends_on_config_and_parent(tmp_path):
    import pipeline.stages  # noqa: F401

    spec = STAGES.get("factorize")
    a = build_config(None, [], model="tiny", data="digits")
    b = build_config(None, ["factorize.energy=0.5"], model="tiny", data="digits")
    c = build_config(None, ["finetune.epochs=9"], model="tiny", data="digits")
    fp = input_fingerprint(a)
    ka = stage_key(spec, a, fp, "p1")
    assert len(ka) == 12
    assert ka == stage_key(spec, a, fp, "p1")
    assert ka != stage_key(spec, b, fp, "p1")   # own section changed
    assert ka == stage_key(spec, c, fp, "p1")   # other section: same key
    assert ka != stage_key(spec, a, fp, "p2")   # different input


def test_changed_stage_config_reruns_that_stage_and_later(e2e):
    cfg, first = e2e
    changed = fast_config(first.root.parent, "benchmark.samples=6")
    res = run(changed, progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    assert status["benchmark"] == "ran"
    assert all(s == "cached" for n, s in status.items() if n != "benchmark")


def test_an_earlier_stage_change_reruns_every_stage_that_reads_it(tmp_path):
    """quantize changes the int8 model while export's output stays byte-identical: benchmark must still rerun."""
    root = tmp_path / "art"
    # without the .ort (whose bytes ORT never reproduces) export's output depends on the finetuned model only
    first = run(fast_config(root, "export.mobile=false"), progress=False)
    res = run(fast_config(root, "export.mobile=false", "quantize.calib_size=24"), progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    by = {r.artifact.stage: r.artifact for r in res.records}
    old = {r.artifact.stage: r.artifact for r in first.records}
    assert by["export"].sha256 == old["export"].sha256  # the immediate parent did not change ...
    assert by["quantize"].sha256 != old["quantize"].sha256  # ... but an earlier input of benchmark did
    assert status["quantize"] == "ran" and status["benchmark"] == "ran"
    assert all(status[n] == "cached" for n in ("baseline", "factorize", "finetune"))


def test_from_and_only(e2e):
    cfg, first = e2e
    res = run(cfg, from_stage="export", progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    assert status["export"] == "ran" and status["benchmark"] == "ran" and status["quantize"] == "cached"
    res = run(cfg, only="entropy-code", progress=False)
    assert [r.status for r in res.records if r.artifact.stage == "entropy-code"] == ["ran"]
    assert res.records[-1].artifact.stage == "entropy-code"


def test_unknown_stage_names_listed(e2e):
    cfg, _ = e2e
    with pytest.raises(ConfigError, match="known stages: baseline, factorize"):
        run(cfg, only="compress", progress=False)


def test_incomplete_stage_folder_is_not_reused(e2e):
    cfg, first = e2e
    art = first.artifact("finetune")
    (art.dir / "artifact.json").unlink()  # simulate a folder whose completion marker never got written
    res = run(cfg, progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    assert status["finetune"] == "ran"
    assert status["factorize"] == "cached"
    assert (art.dir / "artifact.json").is_file()


def test_only_without_cached_inputs_fails_clearly(tmp_path):
    cfg = fast_config(tmp_path)
    with pytest.raises(PipelineError, match="run without --only first"):
        run(cfg, only="quantize", progress=False)
    assert not any(p.name.startswith("00-") for p in (tmp_path / "tiny").iterdir())


def test_lock_rejects_a_second_run(tmp_path):
    root = tmp_path / "m"
    with run_lock(root):
        import multiprocessing as mp

        # flock locks are per open file description: a second open in this process conflicts too.
        with pytest.raises(LockError, match="in use"):
            with run_lock(root):
                pass
