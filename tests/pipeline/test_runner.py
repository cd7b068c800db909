"""Runner: stage keys, cache reuse, partial reruns, --only/--from, lock, incomplete folders never reused."""
from __future__ import annotations

import dataclasses

import pytest

from pipeline.config import build_config
from pipeline.errors import ConfigError, LockError, PipelineError
from pipeline.runner import input_fingerprint, run, run_lock, stage_key, stage_names
from pipeline.stage_api import STAGES

from .conftest import fast_config


def _leaves(obj, prefix=""):
    """Every leaf config path of a config dataclass (``"factorize.budget.macs"``, ...)."""
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        path = prefix + f.name
        out += _leaves(v, path + ".") if dataclasses.is_dataclass(v) else [path]
    return out


def _changed(cfg, path: str):
    """``cfg`` with the leaf at ``path`` set to a different value of its type (the key hashes values, so no range
    check is needed here)."""
    head, _, rest = path.partition(".")
    if rest:
        return dataclasses.replace(cfg, **{head: _changed(getattr(cfg, head), rest)})
    v = getattr(cfg, head)
    if isinstance(v, bool):
        new = not v
    elif isinstance(v, (int, float)):
        new = v + 1
    elif isinstance(v, str):
        new = v + "x"
    elif isinstance(v, tuple):
        new = tuple(x + 1 for x in v)
    else:  # None (an optional number)
        new = 0.5
    return dataclasses.replace(cfg, **{head: new})


def _covered(path: str, reads: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r + ".") for r in reads)


BASE = build_config(None, [], model="tiny", data="digits")
#: the same config with the rank search on: the factorize stage then also reads the finetune/export/target keys
SEARCH = build_config(None, ["factorize.selector=search"], model="tiny", data="digits")
#: ... and with the quantization-aware finetune on: the finetune stage then also reads the QAT rate and grid
QAT = build_config(None, ["quantize.qat_epochs=2", "quantize.weight_bits=4"], model="tiny", data="digits")
SECTION_LEAVES = [p for p in _leaves(BASE) if "." in p]
CASES = [(name, path) for name in stage_names() for path in SECTION_LEAVES]


@pytest.mark.parametrize("name, path", CASES, ids=[f"{n}:{p}" for n, p in CASES])
@pytest.mark.parametrize("cfg", [BASE, SEARCH, QAT], ids=["default", "search", "qat"])
def test_stage_key_hashes_exactly_the_declared_reads(name, path, cfg):
    """A stage's key changes with every config key it declares it reads (under that config), and with no other."""
    spec = STAGES.get(name)
    fp = input_fingerprint(cfg)
    key = stage_key(spec, cfg, fp, "p1")
    changed = stage_key(spec, _changed(cfg, path), fp, "p1")
    if _covered(path, spec.reads_for(cfg)):
        assert changed != key, f"{name} declares {path} but its key ignores it"
    else:
        assert changed == key, f"{name} does not declare {path} but its key changes with it"


def test_stage_key_depends_on_inputs_and_parent():
    spec = STAGES.get("factorize")
    fp = input_fingerprint(BASE)
    ka = stage_key(spec, BASE, fp, "p1")
    assert len(ka) == 12 and ka == stage_key(spec, BASE, fp, "p1")
    assert ka != stage_key(spec, BASE, fp, "p2")  # different upstream artifacts
    assert ka != stage_key(spec, BASE, input_fingerprint(dataclasses.replace(BASE, seed=1)), "p1")
    assert ka == stage_key(spec, dataclasses.replace(BASE, artifacts="elsewhere"), fp, "p1")  # where, not what


def test_declared_cross_section_reads():
    """The reads of other stages' sections found in the code (issue 14): each must be declared."""
    reads = {n: STAGES.get(n).reads for n in stage_names()}
    assert {"factorize.align", "quantize.qat_epochs"} <= set(reads["finetune"])
    qat_only = set(STAGES.get("finetune").reads_for(QAT)) - set(STAGES.get("finetune").reads_for(BASE))
    assert qat_only == {"quantize.qat_lr", "quantize.weight_bits"}  # a weight_bits change without QAT keeps it
    assert "export" not in reads["quantize"]  # quantize takes export's model.onnx, not export's settings
    assert STAGES.get("quantize").inputs == ("baseline", "export/model.onnx")
    assert {"finetune.method", "factorize.align", "quantize.per_channel"} <= set(reads["benchmark"])
    search_only = set(STAGES.get("factorize").reads_for(SEARCH)) - set(reads["factorize"])
    assert {"finetune.lr", "export.opset", "benchmark.target"} <= search_only  # what the search probes and times
    for n in stage_names()[1:]:
        assert "baseline" in STAGES.get(n).input_stages  # every stage after it sees the baseline's pseudo-labels


def test_changed_cross_section_key_reruns_the_stage_that_reads_it(tmp_path):
    """The reproduced stale cache: ``export.opset`` used to leave quantize cached with a model of the old opset."""
    import onnx

    root = tmp_path / "art"
    run(fast_config(root, "export.mobile=false"), upto="quantize", progress=False)
    res = run(fast_config(root, "export.mobile=false", "export.opset=13"), upto="quantize", progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    assert status == {"baseline": "cached", "factorize": "cached", "finetune": "cached", "export": "ran",
                      "quantize": "ran"}
    q = onnx.load(str(res.artifact("quantize").path("model.int8.onnx")))
    assert {o.version for o in q.opset_import if o.domain in ("", "ai.onnx")} == {13}
    res = run(fast_config(root, "export.mobile=false", "export.opset=13", "export.atol=0.001"), upto="quantize",
              progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    assert status["export"] == "ran" and status["quantize"] == "cached"  # same model.onnx: nothing to redo


def test_changed_stage_config_reruns_that_stage_and_later(e2e_copy):
    _, _, root = e2e_copy
    changed = fast_config(root.parent, "benchmark.samples=6")
    res = run(changed, progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    assert status["benchmark"] == "ran"
    assert all(s == "cached" for n, s in status.items() if n != "benchmark")


def test_an_earlier_stage_change_reruns_every_stage_that_reads_it(tmp_path):
    """quantize changes the int8 model: entropy-code and benchmark (which reads it too) rerun, earlier stages not."""
    root = tmp_path / "art"
    first = run(fast_config(root, "export.mobile=false"), progress=False)
    res = run(fast_config(root, "export.mobile=false", "quantize.calib_size=24"), progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    by = {r.artifact.stage: r.artifact for r in res.records}
    old = {r.artifact.stage: r.artifact for r in first.records}
    assert by["quantize"].sha256 != old["quantize"].sha256
    assert status["quantize"] == "ran" and status["entropy-code"] == "ran" and status["benchmark"] == "ran"
    assert all(status[n] == "cached" for n in ("baseline", "factorize", "finetune", "export"))


def test_from_and_only(e2e_copy):
    cfg, _, _ = e2e_copy
    res = run(cfg, from_stage="quantize", progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    assert status["quantize"] == "ran" and status["benchmark"] == "ran" and status["export"] == "cached"
    res = run(cfg, only="entropy-code", progress=False)
    assert [r.status for r in res.records if r.artifact.stage == "entropy-code"] == ["ran"]
    assert res.records[-1].artifact.stage == "entropy-code"


def test_unknown_stage_names_listed(e2e_copy):
    cfg, _, _ = e2e_copy
    with pytest.raises(ConfigError, match="known stages: baseline, factorize"):
        run(cfg, only="compress", progress=False)


def test_incomplete_stage_folder_is_not_reused(e2e_copy):
    cfg, first, root = e2e_copy
    folder = root / first.artifact("finetune").dir.name
    (folder / "artifact.json").unlink()  # simulate a folder whose completion marker never got written
    res = run(cfg, progress=False)
    status = {r.artifact.stage: r.status for r in res.records}
    assert status["finetune"] == "ran"
    assert status["factorize"] == "cached"
    assert (folder / "artifact.json").is_file()


def test_only_without_cached_inputs_fails_clearly(tmp_path):
    cfg = fast_config(tmp_path)
    with pytest.raises(PipelineError, match="run without --only first"):
        run(cfg, only="quantize", progress=False)
    assert not any(p.name.startswith("00-") for p in (tmp_path / "tiny").iterdir())


def test_lock_rejects_a_second_run(tmp_path):
    root = tmp_path / "m"
    with run_lock(root):
        # flock locks are per open file description: a second open in this process conflicts too.
        with pytest.raises(LockError, match="in use"):
            with run_lock(root):
                pass
