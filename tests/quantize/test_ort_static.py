"""Static QDQ quantization: real calibration images, QDQ structure, fp32 closeness, the accuracy guard."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipeline.config import QuantizeConfig
from pipeline.errors import ConfigError, InputError
from pipeline.quantize.ort_static import ImageCalibrationReader, output_sqnr, quantize_static
from tests.quantize.tiny_models import export, images, run, tiny_net
from tests.helpers.onnx_models import input_quant, qdq_weight


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tiny_net(0), tmp_path_factory.mktemp("q") / "fp32.onnx")


def test_calibration_reader_yields_the_given_images_in_order() -> None:
    x = images(7, seed=3)
    r = ImageCalibrationReader(x, "input", batch_size=3)
    assert len(r) == 3
    for _ in range(2):  # a second pass after rewind gives the same images again
        got = []
        while (b := r.get_next()) is not None:
            assert set(b) == {"input"} and b["input"].dtype == np.float32
            got.append(b["input"])
        assert [len(g) for g in got] == [3, 3, 1]
        np.testing.assert_array_equal(np.concatenate(got), x)
        r.rewind()


def test_calibration_reader_rejects_bad_input() -> None:
    with pytest.raises(InputError):
        ImageCalibrationReader(np.zeros((0, 3, 4, 4), np.float32), "input")
    x = images(2)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(Exception, match="NaN"):
        ImageCalibrationReader(x, "input")


def test_output_sqnr() -> None:
    ref = np.array([3.0, 4.0])
    assert output_sqnr(ref, ref) == float("inf")
    assert output_sqnr(ref, ref + np.array([0.3, 0.4])) == pytest.approx(20.0)


def test_a_relative_output_path_is_still_pre_processed(fp32_model: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the folder above, as `lowrank-deploy run --artifacts artifacts` does: ORT's pre-processing must run
    (its temp path was once resolved inside the temp folder itself, doubling it) and leave nothing behind."""
    monkeypatch.chdir(tmp_path)
    info = quantize_static(fp32_model, Path("rel") / "int8.onnx", images(8, seed=1), QuantizeConfig(calib_size=8))
    assert info["preprocessed"] is True
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == ["int8.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_quantize_static_makes_qdq_close_to_fp32(fp32_model: Path, tmp_path: Path) -> None:
    calib = images(16, seed=1)
    out = tmp_path / "int8.onnx"
    info = quantize_static(fp32_model, out, calib, QuantizeConfig(calib_size=12))
    assert info["calibrated_on"] == 12 and info["excluded_nodes"] == [] and info["guard"]["enabled"] is False
    q = onnx.load(str(out))
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # int8 per-channel weights (one scale per output channel) and uint8 activations, as configured.
    w = [qdq_weight(out, k)[0] for k in range(3)]
    assert all(v.dtype == np.int8 for v in w)
    assert qdq_weight(out, 0)[1].shape == (8,)
    x_scale, x_zp = input_quant(out)
    assert x_zp.dtype == np.uint8
    # The input's MinMax range comes from exactly the first 12 calibration images (proves real images were used).
    used = calib[:12]
    expect = (max(used.max(), 0.0) - min(used.min(), 0.0)) / 255.0
    assert x_scale == pytest.approx(expect, rel=1e-5)
    # internal tensors carry short names; the graph's interface keeps its own
    assert info["names"]["renamed"] > 0 and [v.name for v in q.graph.input] == ["input"]
    assert [v.name for v in q.graph.output] == ["logits"]
    x = images(32, seed=9)
    ref, got = run(fp32_model, x), run(out, x)
    assert output_sqnr(ref, got) > 18.0  # about 2% relative error
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.8
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


@pytest.mark.parametrize("act,method", [("int8", "entropy"), ("uint8", "percentile")])
def test_quantize_static_options(fp32_model: Path, tmp_path: Path, act: str, method: str) -> None:
    out = tmp_path / "int8.onnx"
    quantize_static(fp32_model, out, images(8), QuantizeConfig(calib_size=8, activation_type=act,
                                                               calibrate_method=method, per_channel=False))
    assert input_quant(out)[1].dtype == (np.int8 if act == "int8" else np.uint8)
    assert qdq_weight(out, 0)[1].shape == ()  # per-tensor
    x = images(8, seed=5)
    assert output_sqnr(run(fp32_model, x), run(out, x)) > 12.0


def test_bad_config_and_missing_model(fp32_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibrate_method"):
        quantize_static(fp32_model, tmp_path / "o.onnx", images(2), QuantizeConfig(calibrate_method="kl"))
    with pytest.raises(InputError):
        quantize_static(tmp_path / "missing.onnx", tmp_path / "o.onnx", images(2), QuantizeConfig())


def test_accuracy_guard_excludes_the_sensitive_node(tmp_path: Path) -> None:
    # First conv carries an outlier weight on an input channel that is always 0 in the data: harmless in fp32,
    # but per-channel int8 rounds the first conv's real weights to zero. The guard must find and keep that node float.
    fp32 = export(tiny_net(1, outlier=60.0), tmp_path / "fp32.onnx")
    calib = images(16, seed=2, zero_channel2=True)
    val = images(64, seed=4, zero_channel2=True)
    labels = run(fp32, val).argmax(1)
    evals: list[Path] = []

    def eval_fn(p: Path) -> float:
        evals.append(p)
        return float((run(p, val).argmax(1) == labels).mean())

    out = tmp_path / "int8.onnx"
    cfg = replace(QuantizeConfig(calib_size=16), max_drop=0.05)
    info = quantize_static(fp32, out, calib, cfg, eval_fn=eval_fn, fp32_accuracy=1.0)
    g = info["guard"]
    assert g["enabled"] and g["int8_accuracy_all"] < 0.9  # quantizing everything visibly hurts
    assert info["excluded_nodes"] == ["/0/Conv"]  # the most sensitive node, found by measurement, and only it
    assert max(g["sensitivity"], key=g["sensitivity"].get) == "/0/Conv"
    assert g["met"] and g["drop"] <= 0.05
    assert eval_fn(out) == pytest.approx(g["int8_accuracy"])
    q = onnx.load(str(out))
    conv0 = next(n for n in q.graph.node if n.name == "/0/Conv")
    inits = {t.name: t for t in q.graph.initializer}
    # float weight, no DequantizeLinear in front
    assert conv0.input[1] in inits and inits[conv0.input[1]].data_type == onnx.TensorProto.FLOAT


def test_progress_logs_one_line_per_calibration_pass(fp32_model: Path, tmp_path: Path) -> None:
    from pipeline.logs import ROOT
    from pipeline.quantize.ort_static import log
    from tests.helpers.logs import captured

    assert log.name.startswith(ROOT + ".")  # reaches the runner's stderr and run.log handlers
    with captured(log) as records:
        quantize_static(fp32_model, tmp_path / "a.onnx", images(8, seed=1), QuantizeConfig(calib_size=8),
                        progress=True)
    lines = [r.getMessage() for r in records if "calibration pass" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("quantize: calibration pass 1 (8 images, 0 node(s) kept float)")
    with captured(log) as records:
        quantize_static(fp32_model, tmp_path / "b.onnx", images(8, seed=1), QuantizeConfig(calib_size=8))
    assert not [r for r in records if "calibration pass" in r.getMessage()]
