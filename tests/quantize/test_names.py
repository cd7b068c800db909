"""Short internal names in shipped QDQ graphs: same outputs, same interface, smaller files and containers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from pipeline.config import QuantizeConfig
from pipeline.entropy.container import pack_onnx
from pipeline.quantize.names import compact_names
from pipeline.quantize.ort_static import quantize_static
from tests.quantize.tiny_models import export, images, run, tiny_net


@pytest.fixture(scope="module")
def ort_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ORT's own QDQ output, with its long names (quantize_static would already have shortened them)."""
    from onnxruntime.quantization import QuantFormat, quantize_static as ort_quantize

    from pipeline.quantize.ort_static import ImageCalibrationReader

    d = tmp_path_factory.mktemp("names")
    fp32 = export(tiny_net(0), d / "fp32.onnx")
    out = d / "ort.onnx"
    ort_quantize(str(fp32), str(out), ImageCalibrationReader(images(8), "input"), quant_format=QuantFormat.QDQ,
                 per_channel=True)
    return out


def test_compact_names_keeps_outputs_interface_and_layer_names(ort_int8: Path, tmp_path: Path) -> None:
    m = onnx.load(str(ort_int8))
    layers = [n.name for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    info = compact_names(m)
    assert info["skipped"] == 0 and info["renamed"] > 10 and info["nodes_unnamed"] > 0
    onnx.checker.check_model(m)
    out = tmp_path / "short.onnx"
    onnx.save(m, str(out))
    x = images(16, seed=3)
    assert np.array_equal(run(out, x), run(ort_int8, x))  # names change nothing ORT computes
    assert [v.name for v in m.graph.input] == ["input"] and [v.name for v in m.graph.output] == ["logits"]
    assert [n.name for n in m.graph.node if n.op_type in ("Conv", "Gemm")] == layers
    assert all(not n.name for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    names = [t.name for t in m.graph.initializer]
    assert len(set(names)) == len(names) and all(len(n) <= 4 for n in names)
    # deterministic: the same model gives the same bytes
    again = onnx.load(str(ort_int8))
    compact_names(again)
    assert again.SerializeToString() == m.SerializeToString()
    # smaller file, smaller container
    assert out.stat().st_size < ort_int8.stat().st_size
    assert pack_onnx(out, tmp_path / "s.lrdc")["size_bytes"] < pack_onnx(ort_int8, tmp_path / "l.lrdc")["size_bytes"]


def test_compact_names_never_takes_an_interface_name() -> None:
    # a graph input literally named like a short name: the counter skips it
    g = helper.make_graph([helper.make_node("Relu", ["t0"], ["mid"]), helper.make_node("Neg", ["mid"], ["y"])],
                          "g", [helper.make_tensor_value_info("t0", 1, [2])],
                          [helper.make_tensor_value_info("y", 1, [2])])
    m = helper.make_model(g)
    compact_names(m)
    assert m.graph.node[0].output[0] == "t1" and m.graph.node[1].input[0] == "t1"
    assert m.graph.input[0].name == "t0" and m.graph.output[0].name == "y"


def test_compact_names_leaves_graphs_with_subgraphs_alone() -> None:
    branch = helper.make_graph([helper.make_node("Identity", ["outer"], ["b"])], "b", [],
                               [helper.make_tensor_value_info("b", 1, [1])])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["outer"]), helper.make_node("Neg", ["x"], ["c0"]),
                           helper.make_node("Cast", ["c0"], ["c"], to=9),
                           helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                          "g", [helper.make_tensor_value_info("x", 1, [1])],
                          [helper.make_tensor_value_info("y", 1, [1])])
    m = helper.make_model(g)
    before = m.SerializeToString()
    assert compact_names(m)["skipped"] == 1 and m.SerializeToString() == before


def test_quantize_static_ships_short_names(tmp_path: Path) -> None:
    fp32 = export(tiny_net(1), tmp_path / "fp32.onnx")
    out = tmp_path / "int8.onnx"
    info = quantize_static(fp32, out, images(8), QuantizeConfig(calib_size=8, weight_bits="8"))
    assert info["names"]["renamed"] > 10
    m = onnx.load(str(out))
    assert all(len(t.name) <= 4 for t in m.graph.initializer)
    x = images(8, seed=2)
    assert (run(out, x).argmax(1) == run(fp32, x).argmax(1)).mean() >= 0.75
