"""exporters.ort_fixups: an int8 graph with a float Conv between QDQ pairs (what the quantizer's accuracy guard
leaves) converts to a Runtime-style .ort whose outputs equal the .onnx's; other graphs pass through unchanged.

Without the fix-up, onnxruntime 1.32's converter fails on the first graph (checked when this was written; not asserted,
so a fixed ORT does not fail the test)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporters.ort_convert import convert_models
from exporters.ort_fixups import runtime_safe_source
from exporters.ort_mobile import RUNTIME_SESSION_CONFIG
from pipeline.ort_session import make_session


def _half_qdq_conv(path: Path) -> Path:
    """x -> Q -> DQ -> Conv (float weight and bias) -> Q -> DQ -> y, opset 17."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.uint8(128), "zp"),
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_in"),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["cq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["cq", "s", "zp"], ["y"], name="dq_out"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    cfg = tuple(RUNTIME_SESSION_CONFIG.items()) if path.suffix == ".ort" else ()
    s = make_session(path, threads=1, session_config=cfg)
    return s.run(None, {"x": x})[0]


def test_half_qdq_conv_converts_and_matches(tmp_path: Path) -> None:
    src = _half_qdq_conv(tmp_path / "m.onnx")
    (tmp_path / "work").mkdir()
    safe = runtime_safe_source(src, tmp_path / "work")
    assert safe != src
    dq = [n for n in onnx.load(str(safe)).graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(len(n.input) == 3 for n in dq)
    res = convert_models([safe], tmp_path / "out", style="Runtime", names=["m.onnx"])
    assert "m.ort" in res["files"]
    x = np.random.default_rng(1).uniform(-2, 2, (3, 1, 8, 8)).astype(np.float32)
    assert np.array_equal(_run(tmp_path / "out" / "m.ort", x), _run(src, x))


def test_plain_graph_is_left_as_is(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "p.onnx"
    onnx.save(model, str(src))
    (tmp_path / "work").mkdir()
    assert runtime_safe_source(src, tmp_path / "work") == src
    assert list((tmp_path / "work").iterdir()) == []
