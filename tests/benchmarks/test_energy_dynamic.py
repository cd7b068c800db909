"""MAC counting on graphs exported with dynamic dims (benchmarks.energy.onnx_layer_stats) and the ``-1``/``0`` dim
renaming of pipeline.models.onnx.prepare.name_unknown_dims: a Conv feeding a MatMul with a weight matrix through a
run-time Reshape (the sequence length computed by Shape/Slice/Mul/Div, as converters write it), input dims written as
``-1`` the way paddle2onnx does."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.energy import _pin_input, onnx_layer_stats
from pipeline.models.onnx import name_unknown_dims
from tests.helpers.ort import session

C, H, W, K = 3, 8, 10, 24


def _dynamic_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def ints(name: str, v: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(v, np.int64), name)

    inits = [numpy_helper.from_array(rng.standard_normal((16, C, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((16, K)).astype(np.float32), "wm"),
             ints("i0", [0]), ints("i1", [1]), ints("i2", [2]), ints("i3", [3]), ints("i4", [4]), ints("k", [1])]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Shape", ["t"], ["s"]),
             helper.make_node("Slice", ["s", "i0", "i1"], ["n"]),
             helper.make_node("Slice", ["s", "i1", "i2"], ["h"]),
             helper.make_node("Slice", ["s", "i2", "i3"], ["w_"]),
             helper.make_node("Slice", ["s", "i3", "i4"], ["ch"]),
             helper.make_node("Mul", ["h", "w_"], ["hw0"]),
             helper.make_node("Div", ["hw0", "k"], ["hw"]),
             helper.make_node("Concat", ["n", "hw", "ch"], ["shape"], axis=0),
             helper.make_node("Reshape", ["t", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "wm"], ["y"], name="matmul")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, C, -1, -1])  # paddle2onnx's dynamic axes
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, -1, K])
    m = helper.make_model(helper.make_graph(nodes, "dyn", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_shape_inference_alone_cannot_size_the_matmul() -> None:
    m = copy.deepcopy(_dynamic_model())
    _pin_input(m, (C, H, W), "dyn")
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    r = [v for v in inferred.graph.value_info if v.name == "r"]
    dims = list(r[0].type.tensor_type.shape.dim) if r else []
    # the case the ORT run covers: rank or sizes unknown
    assert len(dims) != 3 or not all(d.HasField("dim_value") for d in dims)


def test_macs_of_a_dynamic_graph_at_the_real_input_shape(tmp_path) -> None:
    path = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_model(), str(path))
    stats = onnx_layer_stats(path, (C, H, W))
    by = {l["name"]: l for l in stats["layers"]}
    assert by["conv"]["macs"] == 16 * H * W * C * 9
    # (1, H*W, 16) @ (16, K): every one of the H*W*K outputs is a 16-long dot product
    assert by["matmul"]["macs"] == H * W * K * 16 and by["matmul"]["out_shape"] == [1, H * W, K]
    assert by["matmul"]["params"] == 16 * K
    assert stats["macs"] == by["conv"]["macs"] + by["matmul"]["macs"]
    # Another input size gives the MACs of that size, not of a cached or declared one.
    assert onnx_layer_stats(path, (C, 2 * H, W))["macs"] == 2 * stats["macs"]


def test_minus_one_dims_become_named_dynamic_dims() -> None:
    m = _dynamic_model()
    assert name_unknown_dims(m) == 5  # three in x, two in y
    dims = [d for v in (*m.graph.input, *m.graph.output) for d in v.type.tensor_type.shape.dim]
    assert all(d.dim_value > 0 or d.dim_param for d in dims)
    names = [d.dim_param for d in dims if d.dim_param]
    assert len(set(names)) == len(names) == 5  # nothing says two of them are the same size
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1] == C
    onnx.checker.check_model(m, full_check=True)
    out = session(m.SerializeToString()).run(None, {"x": np.zeros((2, C, H, W), np.float32)})[0]
    assert out.shape == (2, H * W, K)
    assert name_unknown_dims(m) == 0  # idempotent


@pytest.mark.parametrize("value", [0, -1])
def test_zero_and_minus_one_are_both_renamed(value: int) -> None:
    m = _dynamic_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = value
    name_unknown_dims(m)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param
