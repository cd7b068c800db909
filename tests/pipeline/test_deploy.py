"""deploy/ as an app team gets it (issue 16): metadata in every shipped graph, keyed runs, a manifest that matches,
shipped .ort outputs equal to their .onnx, baked preprocessing, and no file left from an earlier config.

The shared e2e run (tiny + digits, export.mobile on, target nnapi) is copied into a fresh artifacts folder for the
scenarios that rerun: the cache keys do not hash the folder, so only the stages whose config changed run again.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import pipeline.publish as pub
from exporters.metadata import PREFIX, meta_from_props, read_props
from exporters.ort_mobile import RUNTIME_SESSION_CONFIG
from pipeline.checkpoint import load_card
from pipeline.cli import main
from pipeline.data import load_dataset
from pipeline.ort_session import make_session
from pipeline.publish import PublishError, verify
from pipeline.runner import run

from .conftest import FAST, fast_config

NNAPI_FILES = {"model.onnx", "model.int8.onnx", "model.ort", "model.int8.ort", "model.b1.onnx", "model.b1.ort",
               "model.int8.b1.onnx", "model.int8.b1.ort", "required_operators.config", "weights.lrdc",
               "model.json", "manifest.json", "report.md", "report.json", "report.html"}
GRAPHS = (".onnx", ".ort")


def _copy_run(model_root: Path, dst: Path) -> Path:
    """A copy of a run's stage folders under the artifacts root ``dst`` (deploy/ and runs/ are made by the next
    run). Returns ``dst``."""
    (dst / model_root.name).mkdir(parents=True)
    for p in model_root.iterdir():
        if p.is_dir() and p.name[:2].isdigit():
            shutil.copytree(p, dst / model_root.name / p.name)
    return dst


def _run(root: Path, *extra: str):
    return run(fast_config(root, *extra), progress=False)


def _session(path: Path, **kw):
    cfg = tuple(RUNTIME_SESSION_CONFIG.items()) if path.suffix == ".ort" else ()
    return make_session(path, threads=1, session_config=cfg, **kw)


def _predict(path: Path, x: np.ndarray) -> np.ndarray:
    s = _session(path)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _test_x(n: int = 64) -> np.ndarray:
    return load_dataset("digits", seed=0).test.x[:n].numpy().astype(np.float32)


def test_default_deploy_files_and_keyed_run(e2e):
    cfg, result = e2e
    d = result.deploy_dir
    assert d.is_symlink() and os.readlink(d) == os.path.join("runs", result.records[-1].artifact.key)
    names = {p.name for p in d.iterdir()}
    assert NNAPI_FILES <= names, NNAPI_FILES - names


def test_metadata_in_every_shipped_graph(e2e):
    _, result = e2e
    d = result.deploy_dir
    card = load_card(result.artifact("baseline").dir)
    shipped = sorted(p for p in d.iterdir() if p.suffix in GRAPHS)
    assert len(shipped) == 8
    for p in shipped:
        props = read_props(p)  # what an app sees: ORT's custom_metadata_map, for .onnx and .ort alike
        if p.suffix == ".onnx":  # and the ONNX file itself
            assert {e.key: e.value for e in onnx.load(str(p)).metadata_props if e.key.startswith(PREFIX)} == \
                {k: v for k, v in props.items() if k.startswith(PREFIX)}, p.name
        meta = meta_from_props(props, p.name)
        assert meta.mean == pytest.approx(card.mean) and meta.std == pytest.approx(card.std), p.name
        assert meta.input_size == card.input_shape and meta.num_classes == card.num_classes
        assert meta.class_names == card.class_names and meta.task == "classification"
        assert meta.baked is False
        assert meta.dynamic_batch == (".b1." not in p.name), p.name
        if not meta.dynamic_batch:
            assert meta.fixed_batch == 1
    mj = json.loads((d / "model.json").read_text())
    assert mj["input"]["mean"] == pytest.approx(list(card.mean)) and mj["num_classes"] == card.num_classes
    assert {n for n in mj["files"] if n.endswith(GRAPHS)} == {p.name for p in shipped}
    for n, facts in mj["files"].items():
        if n.endswith(".ort"):
            assert facts["session_config"] == RUNTIME_SESSION_CONFIG and facts["style"] == "Runtime"


def test_manifest_matches_files(e2e):
    _, result = e2e
    d = result.deploy_dir
    man = verify(d)  # raises on any mismatch, missing or unlisted file
    assert man["run_key"] == result.records[-1].artifact.key and man["dataset"] == "digits"
    for name, e in man["files"].items():
        assert e["bytes"] == (d / name).stat().st_size
    rep = json.loads((d / "report.json").read_text())
    int8 = next(v for v in rep["variants"] if v["name"] == "int8")
    assert man["files"]["model.int8.onnx"]["figures"]["accuracy"] == int8["accuracy"]
    assert man["files"]["model.int8.onnx"]["figures"]["size_bytes"] == (d / "model.int8.onnx").stat().st_size
    assert "NNAPI" in man["files"]["model.int8.ort"]["figures"]["usability"]


def test_shipped_ort_outputs_equal_their_onnx(e2e):
    _, result = e2e
    d = result.deploy_dir
    x = _test_x()
    for onnx_name in ("model.int8.onnx", "model.onnx"):
        ort_name = onnx_name.replace(".onnx", ".ort")
        a, b = _predict(d / onnx_name, x), _predict(d / ort_name, x)
        if "int8" in onnx_name:
            assert np.array_equal(a, b), f"{ort_name} vs {onnx_name}: max abs {np.abs(a - b).max()}"
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        b1 = _predict(d / onnx_name.replace(".onnx", ".b1.ort"), x[:1])
        np.testing.assert_allclose(b1, a[:1], rtol=1e-4, atol=1e-5)


def test_report_mobile_table_names_shipped_files(e2e):
    _, result = e2e
    md = (result.deploy_dir / "report.md").read_text()
    html = (result.deploy_dir / "report.html").read_text()
    for name in ("model.int8.ort", "model.int8.b1.ort", "model.ort", "model.b1.ort"):
        assert f"| {name} | NNAPI |" in md, name
        assert f"<td>{name}</td>" in html, name
    assert "session.enable_saved_runtime_optimizations=1" in md


def test_stale_files_gone_after_mobile_off_and_earlier_run_kept(e2e, tmp_path):
    _, first = e2e
    root = _copy_run(first.root, tmp_path / "art")
    with_mobile = _run(root)
    assert all(r.status == "cached" for r in with_mobile.records)
    old_key = with_mobile.records[-1].artifact.key
    res = _run(root, "export.mobile=false")
    assert res.artifact("export").key == with_mobile.artifact("export").key  # export does not read export.mobile
    d = res.deploy_dir
    names = {p.name for p in d.iterdir()}
    assert not any(n.endswith(".ort") or ".b1." in n for n in names), names
    assert "required_operators.config" not in names
    assert {"model.onnx", "model.int8.onnx", "weights.lrdc", "model.json", "manifest.json"} <= names
    verify(d)
    mj = json.loads((d / "model.json").read_text())
    assert not any(n.endswith(".ort") for n in mj["files"])
    assert res.records[-1].artifact.key != old_key
    kept = root / "tiny" / "runs" / old_key
    assert (kept / "model.int8.ort").is_file()
    verify(kept)


def test_full_disk_while_publishing_keeps_previous_deploy(e2e, tmp_path, monkeypatch):
    _, first = e2e
    root = _copy_run(first.root, tmp_path / "art")
    _run(root)
    link = root / "tiny" / "deploy"
    before = os.readlink(link)

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(pub, "copy_file", no_space)
    with pytest.raises(PublishError, match="free disk space"):
        _run(root)
    assert os.readlink(link) == before
    verify(link)
    args = ["run", "--model", "tiny", "--data", "digits", "--artifacts", str(root), "--no-progress"]
    code = main(args + [a for s in FAST for a in ("--set", s)])
    assert code == PublishError("x").exit_code != 0  # the CLI's error path, with the PipelineError exit code
    assert os.readlink(link) == before


def test_two_datasets_keep_their_own_runs(e2e, tmp_path):
    _, first = e2e
    root = _copy_run(first.root, tmp_path / "art")
    a = _run(root)
    b = run(fast_config(root, "export.mobile=false", "dataset.train_size=160", "dataset.val_size=40",
                        "dataset.test_size=40", data="shapes"), progress=False)
    runs = root / "tiny" / "runs"
    ka, kb = a.records[-1].artifact.key, b.records[-1].artifact.key
    assert ka != kb and {ka, kb} <= {p.name for p in runs.iterdir()}
    assert json.loads((runs / ka / "manifest.json").read_text())["dataset"] == "digits"
    assert json.loads((runs / kb / "manifest.json").read_text())["dataset"] == "shapes"
    verify(runs / ka)
    verify(runs / kb)
    assert os.readlink(root / "tiny" / "deploy") == os.path.join("runs", kb)


def test_bake_preprocessing_ships_graphs_for_raw_input(e2e, tmp_path):
    _, first = e2e
    root = _copy_run(first.root, tmp_path / "art")
    res = _run(root, "export.bake_preprocessing=true")
    d = res.deploy_dir
    card = load_card(res.artifact("baseline").dir)
    x = _test_x()
    raw = x * np.asarray(card.std, np.float32).reshape(1, -1, 1, 1) + np.asarray(card.mean, np.float32).reshape(1, -1, 1, 1)
    unbaked = res.artifact("export").path("model.onnx")
    np.testing.assert_allclose(_predict(d / "model.onnx", raw), _predict(unbaked, x), rtol=1e-4, atol=1e-4)
    q = res.artifact("quantize").path("model.int8.onnx")
    a, b = _predict(d / "model.int8.onnx", raw), _predict(q, x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95  # float rounding of x/s - m/s may move a value one step
    for p in d.iterdir():
        if p.suffix in GRAPHS:
            assert meta_from_props(read_props(p), p.name).baked is True, p.name
    assert np.array_equal(_predict(d / "model.int8.ort", raw), _predict(d / "model.int8.onnx", raw))
    rep = json.loads((d / "report.json").read_text())
    by = {v["name"]: v for v in rep["variants"]}
    assert by["int8"]["file"].endswith("model.int8.baked.onnx") and "raw" in by["int8"]["input"]
    assert json.loads((d / "model.json").read_text())["input"]["preprocessing_baked"] is True
    verify(d)


def test_mobile_target_times_the_shipped_ort(e2e, tmp_path):
    _, first = e2e
    root = _copy_run(first.root, tmp_path / "art")
    res = _run(root, "benchmark.target=mobile-nnapi")
    assert res.artifact("quantize").key == first.artifact("quantize").key  # only the benchmark reruns
    d = res.deploy_dir
    by = {v["name"]: v for v in json.loads((d / "report.json").read_text())["variants"]}
    assert by["int8"]["latency_ms"]["timed_file"] == "model.int8.ort"
    assert by["finetuned"]["latency_ms"]["timed_file"] == "model.ort"
    assert "timed_file" not in by["original"]["latency_ms"]  # not shipped: converted for timing
    figs = verify(d)["files"]
    assert figs["model.int8.ort"]["figures"]["latency_p50_ms"] == by["int8"]["latency_ms"]["p50"]
    assert "latency_p50_ms" not in figs["model.int8.onnx"]["figures"]
    assert figs["model.int8.onnx"]["figures"]["accuracy"] == by["int8"]["accuracy"]
