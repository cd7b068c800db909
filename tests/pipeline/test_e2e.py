"""End to end: all stages on tiny + digits produce the deliverables, a valid report, and a working container."""
from __future__ import annotations

import json

import numpy as np
import onnx

from pipeline.runner import run, stage_names
from tests.helpers.ort import session


def test_all_stages_ran_in_order(e2e):
    _, result = e2e
    assert [r.artifact.stage for r in result.records] == stage_names()
    assert stage_names() == ["baseline", "factorize", "finetune", "export", "quantize", "entropy-code", "benchmark"]
    assert all(r.status == "ran" for r in result.records)
    for i, r in enumerate(result.records):
        assert r.artifact.dir.name.startswith(f"{i:02d}-{r.artifact.stage}-")
        assert (r.artifact.dir / "artifact.json").is_file()


def test_deliverables_exist(e2e):
    _, result = e2e
    d = result.deploy_dir
    for name in ("model.onnx", "model.int8.onnx", "model.ort", "weights.lrdc", "report.md", "report.json", "report.html"):
        assert (d / name).is_file(), name
        assert (d / name).stat().st_size > 0


def test_baseline_trained_and_factorized(e2e):
    _, result = e2e
    base = result.artifact("baseline").metrics
    assert base["source"] == "trained"
    assert base["test_accuracy"] > 0.5  # 3 epochs of a tiny net on digits: far above chance (0.1)
    fac = result.artifact("factorize").metrics
    assert fac["layers_factorized"] >= 1
    assert fac["macs_after"] < fac["macs_before"]


def test_exported_graph_has_plain_conv_chains(e2e):
    _, result = e2e
    m = onnx.load(str(result.deploy_dir / "model.onnx"))
    ops = {n.op_type for n in m.graph.node}
    assert "Conv" in ops
    assert not ops & {"Einsum", "BatchNormalization", "Flatten"}
    assert m.opset_import[0].version == 17
    # dynamic batch axis
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param or dim0.dim_value == 0


def test_int8_model_is_qdq(e2e):
    _, result = e2e
    m = onnx.load(str(result.deploy_dir / "model.int8.onnx"))
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    q = result.artifact("quantize").metrics
    assert 0.0 <= q["agreement"] <= 1.0 and q["agreement"] > 0.8


def test_report_schema_and_variants(e2e):
    from benchmarks.report import validate_report

    _, result = e2e
    rep = json.loads((result.deploy_dir / "report.json").read_text())
    validate_report(rep)
    assert rep["schema_version"] == 1
    assert rep["model"] == "tiny" and rep["dataset"] == "digits"
    names = [v["name"] for v in rep["variants"]]
    for n in ("original", "factorized", "finetuned", "int8"):
        assert n in names
    for v in rep["variants"]:
        assert 0.0 <= v["accuracy"] <= 1.0
        assert v["size_bytes"] > 0 and v["macs"] > 0 and v["params"] > 0
        lat = v["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert rep["container"]["size_bytes"] == (result.deploy_dir / "weights.lrdc").stat().st_size
    md = (result.deploy_dir / "report.md").read_text()
    assert "x smaller" in md and "ships" in md  # the gate's headline: names the shipped variant, speed per its interval


def test_unpack_cli_reproduces_int8_model(e2e, tmp_path):
    from pipeline.cli import main

    _, result = e2e
    out = tmp_path / "rebuilt.onnx"
    assert main(["unpack", str(result.deploy_dir / "weights.lrdc"), "-o", str(out)]) == 0
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    outs = []
    for p in (result.deploy_dir / "model.int8.onnx", out):
        s = session(str(p))
        outs.append(s.run(None, {s.get_inputs()[0].name: x})[0])
    assert np.array_equal(outs[0], outs[1])


def test_second_run_is_fully_cached(e2e_copy):
    cfg, first, root = e2e_copy
    again = run(cfg, progress=False)
    assert [r.status for r in again.records] == ["cached"] * len(again.records)
    assert [r.artifact.key for r in again.records] == [r.artifact.key for r in first.records]
    manifest = json.loads((root / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["cached"] * len(again.records)
    assert manifest["stages"][1]["parent_key"] == manifest["stages"][0]["key"]


def test_default_weight_widths_are_fitted_to_the_accuracy_floor(e2e):
    """quantize.weight_bits=auto (the default): per-layer widths cut where the accuracy on validation + training
    images would fall more than weight_drop under the 8-bit model's, in the graph that ships; the report says so."""
    from benchmarks.accuracy import onnx_accuracy
    from pipeline.quantize.weights import grid_multiplier
    from pipeline.stage_api import config_dataset

    cfg, result = e2e
    assert cfg.quantize.weight_bits == "auto" and cfg.quantize.size_budget is None
    wb = result.artifact("quantize").metrics["weight_bits"]
    fit = wb["fit"]
    guard = result.artifact("quantize").metrics["guard"]
    assert fit["floor"] == guard["fp32_accuracy"] - cfg.quantize.max_drop
    # the cut held the 8-bit model's accuracy on validation + 1024 training images, within weight_drop
    assert fit["check_drop"] == cfg.quantize.weight_drop
    assert fit["check_accuracy"] >= fit["check_base"] - fit["check_drop"]
    data = config_dataset(cfg)
    rng = np.random.default_rng(cfg.seed)
    rng.choice(len(data.train.x), size=min(cfg.quantize.calib_size, len(data.train.x)), replace=False)
    idx = np.sort(rng.choice(len(data.train.x), size=min(1024, len(data.train.x)), replace=False))
    cx = np.concatenate([data.val.x.numpy(), data.train.x[idx].numpy()])
    cy = np.concatenate([data.val.y.numpy(), data.train.y[idx].numpy()])
    assert onnx_accuracy(result.deploy_dir / "model.int8.onnx", cx, cy) == fit["check_accuracy"]
    int8 = result.deploy_dir / "model.int8.onnx"
    val = onnx_accuracy(int8, data.val.x.numpy(), data.val.y.numpy())
    assert val == wb["accuracy"]  # the shipped file is the one the fit measured
    m = onnx.load(str(int8))
    inits = {t.name: t for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    for node in m.graph.node:
        b = wb["bits"].get(node.name)
        if b is None or b == 8:
            continue
        q = onnx.numpy_helper.to_array(inits[producers[node.input[1]].input[0]])
        assert np.all(q % grid_multiplier(b, wb["qmax"]) == 0), node.name  # on its b-bit grid
    rep = json.loads((result.deploy_dir / "report.json").read_text())
    assert rep["quantize"]["weight_bits"]["avg_bits"] == wb["avg_bits"]
    md = (result.deploy_dir / "report.md").read_text()
    assert "Weight widths (auto, one step per layer)" in md or "Weight widths: 8 bits kept" in md
    assert rep["quantize"]["weight_bits"]["grid"] == "layer"  # the default grid
