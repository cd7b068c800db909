"""ONNX export, ORT-vs-torch parity, ORT format conversion and the mobile usability summary, on a tiny CNN."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from exporters.onnx import export_onnx
from exporters.ort_mobile import convert_to_ort, mobile_usability
from exporters.validate import check_parity
from pipeline.errors import InputError, ValidationError
from pipeline.ort_session import make_session

SHAPE = (3, 8, 8)


def _net() -> nn.Module:
    """conv-BN-ReLU-flatten-linear with non-trivial BN statistics (so a missed fold would show)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    with torch.no_grad():
        bn = m[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return m


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, dict]:
    d = tmp_path_factory.mktemp("export")
    model = _net()
    model.train()  # export must not depend on (or change) the caller's mode
    info = export_onnx(model, SHAPE, d / "model.onnx")
    assert model.training and model[1].training, "export_onnx changed the caller's training flags"
    return model, d / "model.onnx", info


def _session(path: Path) -> ort.InferenceSession:
    return make_session(path, threads=1)


def test_export_folds_bn_removes_flatten_and_runs_dynamic_batch(exported: tuple[nn.Module, Path, dict]) -> None:
    model, path, info = exported
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" not in ops
    assert "Flatten" not in ops
    assert "Reshape" in ops and "Conv" in ops
    assert info["nodes"] == {op: ops.count(op) for op in set(ops)}
    assert info["opset"] == 17 and info["bytes"] == path.stat().st_size and info["path"] == str(path)
    assert isinstance(info["simplified"], bool)
    assert proto.graph.input[0].name == "input" and proto.graph.output[0].name == "logits"
    # onnxsim's bookkeeping ("onnxsim.*" metadata) is not shipped
    assert not [q.key for q in proto.metadata_props if q.key.startswith("onnxsim.")]
    onnx.checker.check_model(proto, full_check=True)
    # Self-contained: no tensor points at external data, and nothing else was written next to the model.
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    sess = _session(path)
    for b in (1, 4):
        x = np.random.default_rng(b).standard_normal((b, *SHAPE)).astype(np.float32)
        (y,) = sess.run(None, {"input": x})
        assert y.shape == (b, 10)
        with torch.no_grad():
            ref = copy.deepcopy(model).eval()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-3)


def test_export_without_simplify_still_clean(tmp_path: Path) -> None:
    info = export_onnx(_net(), SHAPE, tmp_path / "m.onnx", simplify=False)
    assert info["simplified"] is False
    assert "Flatten" not in info["nodes"] and "BatchNormalization" not in info["nodes"]


def test_parity_passes_and_reports_each_batch(exported: tuple[nn.Module, Path, dict]) -> None:
    model, path, _ = exported
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((b, *SHAPE)).astype(np.float32) for b in (1, 4)]
    res = check_parity(model, path, inputs)
    assert [b["batch"] for b in res["batches"]] == [1, 4]
    assert all(0.0 <= b["max_abs"] < 1e-4 for b in res["batches"])
    assert model.training, "check_parity changed the caller's training flags"


def test_parity_fails_on_perturbed_weights_listing_every_batch(exported: tuple[nn.Module, Path, dict]) -> None:
    model, path, _ = exported
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[4].weight.add_(0.05 * torch.randn_like(bad[4].weight))
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((b, *SHAPE)).astype(np.float32) for b in (1, 4)]
    with pytest.raises(ValidationError) as ei:
        check_parity(bad, path, inputs)
    msg = str(ei.value)
    assert "batch 1" in msg and "batch 4" in msg, msg  # all failures collected, not just the first


def test_parity_catches_shape_mismatch(exported: tuple[nn.Module, Path, dict]) -> None:
    _, path, _ = exported
    torch.manual_seed(0)
    other = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 7))
    with pytest.raises(ValidationError, match="shape"):
        check_parity(other, path, [np.zeros((2, *SHAPE), np.float32)])


def test_convert_to_ort_produces_model_and_config(exported: tuple[nn.Module, Path, dict], tmp_path: Path) -> None:
    _, path, _ = exported
    res = convert_to_ort(path, tmp_path / "mobile")
    ort_path, cfg_path = Path(res["ort_path"]), Path(res["config_path"])
    assert ort_path == tmp_path / "mobile" / "model.ort" and ort_path.is_file()
    assert cfg_path == tmp_path / "mobile" / "required_operators.config" and cfg_path.is_file()
    assert res["bytes"] == ort_path.stat().st_size > 0
    assert "Conv" in cfg_path.read_text()
    # The .ort file loads and computes what the .onnx computes.
    x = np.random.default_rng(2).standard_normal((2, *SHAPE)).astype(np.float32)
    a = make_session(ort_path).run(None, {"input": x})[0]  # a .ort path loads as ORT format
    b = _session(path).run(None, {"input": x})[0]
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    # Nothing but the two deliverables is left behind.
    assert sorted(p.name for p in (tmp_path / "mobile").iterdir()) == ["model.ort", "required_operators.config"]


def test_convert_to_ort_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        convert_to_ort(tmp_path / "nope.onnx", tmp_path)


def test_mobile_usability_summary(exported: tuple[nn.Module, Path, dict]) -> None:
    _, path, _ = exported
    res = mobile_usability(path)
    assert isinstance(res, dict) and res["error"] is None, res.get("error")
    for ep in ("NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"):
        s = res["summary"][ep]
        # No Flatten left, so every EP (MLProgram included) takes all nodes once shapes are fixed.
        assert s["fixed_shapes"]["supported_pct"] == 100.0, (ep, s)
        assert s["verdict_fixed_shapes"] == "YES"


def test_mobile_usability_never_raises(tmp_path: Path) -> None:
    res = mobile_usability(tmp_path / "missing.onnx")
    assert isinstance(res, dict) and res["error"]
