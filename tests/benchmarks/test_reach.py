"""The report's ``reach`` section (benchmarks.report.reach): on a depthwise-separable classifier the depthwise convs'
MACs, counted by hand, are out of reach, the MAC-reduction cap is their inverse share, and the Markdown/HTML reports
say so in their first lines, with the layers the fidelity check moved."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.energy import onnx_layer_stats
from benchmarks.report import render_html, render_markdown, validate_report
from benchmarks.report.reach import reach_section
from tests.benchmarks.test_report import _report
from tests.helpers.wild_models import WILD_MODELS, export_wild, make_model


@pytest.fixture(scope="module")
def dw_stats(tmp_path_factory: pytest.TempPathFactory) -> dict:
    spec = WILD_MODELS["dw_separable"]
    path = export_wild(make_model(spec), spec, tmp_path_factory.mktemp("reach") / "dw.onnx", opset=11)
    return onnx_layer_stats(path, spec.input_shape)


def _hand_depthwise_macs(model_layers: list[dict]) -> int:
    """Depthwise conv MACs from the first principles: every output element is one kh x kw window of one channel."""
    total = 0
    for layer in model_layers:
        if layer["op"] == "Conv" and layer["group"] > 1 and layer["weight_shape"][1] == 1:
            n, _, kh, kw = layer["weight_shape"]
            _, c, h, w = layer["out_shape"]
            assert c == n
            total += c * h * w * kh * kw
    return total


def test_depthwise_macs_are_out_of_reach_and_cap_the_reduction(dw_stats: dict) -> None:
    layers = dw_stats["layers"]
    dw = _hand_depthwise_macs(layers)
    assert dw > 0
    reach = reach_section(layers, {"layers_factorized": 9, "layers_dense": 9, "layers_fallen_back": 2})
    assert reach["macs_total"] == dw_stats["macs"]
    assert reach["by_reason"]["depthwise conv"]["macs"] == dw
    assert reach["macs_out_of_reach"] == dw  # every other layer of this net is a dense Conv or the Gemm
    assert reach["out_of_reach_share"] == pytest.approx(dw / dw_stats["macs"])
    assert reach["max_mac_reduction"] == pytest.approx(dw_stats["macs"] / dw)
    assert reach["layers_total"] == 18 and reach["layers_fallen_back"] == 2
    text = reach["text"]
    assert "depthwise conv" in text and f"at most {dw_stats['macs'] / dw:.2f}x" in text
    assert "9/18 layers factorized" in text and "2 fell back" in text


def test_matmul_without_a_weight_and_convtranspose_are_out_of_reach() -> None:
    layers = [
        {"op": "Conv", "macs": 600, "group": 1, "weight_dtype": "float", "weight_shape": [8, 8, 3, 3]},
        {"op": "MatMul", "macs": 300, "weight_dtype": None, "weight_shape": [1, 4, 4]},  # q @ k^T
        {"op": "MatMul", "macs": 50, "weight_dtype": "float", "weight_shape": [4, 4]},
        {"op": "ConvTranspose", "macs": 50, "group": 1, "weight_dtype": "float", "weight_shape": [8, 8, 2, 2]},
    ]
    reach = reach_section(layers)
    assert reach["macs_out_of_reach"] == 350 and reach["out_of_reach_share"] == pytest.approx(0.35)
    assert set(reach["by_reason"]) == {"MatMul without a constant weight", "ConvTranspose (no low-rank form)"}
    assert reach["max_mac_reduction"] == pytest.approx(1 / 0.35)


def test_nothing_out_of_reach_claims_no_cap() -> None:
    reach = reach_section([{"op": "Gemm", "macs": 10, "weight_dtype": "float", "weight_shape": [2, 5]}])
    assert reach["max_mac_reduction"] is None and reach["out_of_reach_share"] == 0.0
    assert "no cap" in reach["text"]


def test_a_matmul_with_a_weight_read_from_a_graph_is_in_reach(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["h", "ht"], ["y"], name="scores")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 5, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 5, 5])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    stats = onnx_layer_stats(tmp_path / "m.onnx", (1, 5, 6))
    reach = reach_section(stats["layers"])
    assert reach["macs_total"] == 5 * 4 * 6 + 5 * 5 * 4
    assert reach["macs_out_of_reach"] == 5 * 5 * 4  # the scores product: activation x activation


def test_reports_open_with_the_reach_line(dw_stats: dict) -> None:
    rep = copy.deepcopy(_report())
    rep["reach"] = reach_section(dw_stats["layers"], {"layers_factorized": 3, "layers_dense": 15,
                                                      "layers_fallen_back": 1})
    validate_report(rep)
    md = render_markdown(rep).splitlines()
    assert md[0].startswith("# ") and md[2] == f"**{rep['reach']['text']}**"
    page = render_html(rep)
    assert page.index("Reach: ") < page.index("<h2>Variants</h2>")
    assert math.isfinite(rep["reach"]["max_mac_reduction"])
    bad = copy.deepcopy(rep)
    bad["reach"]["out_of_reach_share"] = 1.5
    with pytest.raises(Exception, match="reach.out_of_reach_share"):
        validate_report(bad)
