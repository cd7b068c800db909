"""Importer op coverage: one small graph per operator form, built with ``onnx.helper`` the way converters write them
(every weight and constant input a ``Constant`` node, dynamic batch), imported and checked against ONNX Runtime on
seeded inputs at batch 1 and 2, at opset 11, 18 and 21 (where the op exists at that opset)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pipeline.models.onnx import onnx_to_torch
from tests.helpers.ort import session

IN_SHAPE = (4, 6, 6)  # C, H, W after the dynamic batch axis
RNG = np.random.default_rng(7)


class G:
    """A graph under construction: Constant nodes for every constant, ``op`` nodes in order."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.k = 0

    def const(self, arr: Any, dtype: Any = np.float32) -> str:
        self.k += 1
        name = f"k{self.k}"
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.asarray(arr, dtype=dtype), name)))
        return name

    def w(self, *shape: int, scale: float = 0.3) -> str:
        return self.const(RNG.standard_normal(shape) * scale)

    def ints(self, v: list[int]) -> str:
        return self.const(v, np.int64)

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        self.k += 1
        outs = [f"v{self.k}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type.lower()}_{self.k}", **attrs))
        return outs

    def save(self, out: str, path: Path) -> Path:
        self.nodes.append(helper.make_node("Identity", [out], ["y"], name="out"))
        graph = helper.make_graph(self.nodes, "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *IN_SHAPE])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        # Declare the output's inferred type and shape, as exporters do (the checker wants a shape).
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
        return path


def _reduce_mean(g: G, x: str, axes: list[int], keepdims: int) -> str:
    if g.opset >= 18:
        return g.op("ReduceMean", [x, g.ints(axes)], keepdims=keepdims)[0]
    return g.op("ReduceMean", [x], axes=axes, keepdims=keepdims)[0]


def _reduce(g: G, op: str, x: str, axes: list[int], keepdims: int, input_from: int) -> str:
    if g.opset >= input_from:
        return g.op(op, [x, g.ints(axes)], keepdims=keepdims)[0]
    return g.op(op, [x], axes=axes, keepdims=keepdims)[0]


def _resize(g: G, x: str, scales: list[float] | None = None, sizes: str | None = None, **attrs: Any) -> str:
    roi = g.const(np.zeros(0))
    sc = g.const(scales) if scales is not None else g.const(np.zeros(0))
    return g.op("Resize", [x, roi, sc] + ([sizes] if sizes else []), **attrs)[0]


def _split(g: G, x: str, parts: list[int] | None, n: int) -> list[str]:
    kw: dict[str, Any] = {"axis": 1}
    inputs = [x]
    if parts is not None:
        if g.opset >= 13:
            inputs.append(g.ints(parts))
        else:
            kw["split"] = parts
    elif g.opset >= 18:
        kw["num_outputs"] = n
    return g.op("Split", inputs, n_out=n, **kw)


def _clip(g: G, x: str, lo: float, hi: float) -> str:
    return g.op("Clip", [x, g.const(lo), g.const(hi)])[0]


def _pad(g: G, x: str, pads: list[int], mode: str, value: float = 0.0) -> str:
    return g.op("Pad", [x, g.ints(pads), g.const(value)], mode=mode)[0]


def _slice(g: G, x: str, starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> str:
    return g.op("Slice", [x, g.ints(starts), g.ints(ends), g.ints(axes), g.ints(steps)])[0]


def _shape_sizes(g: G, x: str, hw: list[int]) -> str:
    """Sizes computed from the input's shape (dynamic batch): Shape -> Slice -> Concat."""
    nc = _slice(g, g.op("Shape", [x])[0], [0], [2], [0], [1])
    return g.op("Concat", [nc, g.ints(hw)], axis=0)[0]


# name -> (first opset it exists at, builder(g, x) -> output value)
CASES: dict[str, tuple[int, Callable[[G, str], str]]] = {
    "convtranspose_stride2_outpad": (11, lambda g, x: g.op("ConvTranspose", [x, g.w(4, 3, 3, 3), g.w(3)],
                                                           strides=[2, 2], pads=[1, 1, 1, 1],
                                                           output_padding=[1, 1])[0]),
    "convtranspose_asym_pads": (11, lambda g, x: g.op("ConvTranspose", [x, g.w(4, 5, 3, 3)], strides=[2, 2],
                                                      pads=[0, 1, 2, 0])[0]),
    "convtranspose_groups": (11, lambda g, x: g.op("ConvTranspose", [x, g.w(4, 2, 2, 2), g.w(4)], group=2,
                                                   strides=[2, 2])[0]),
    "resize_nearest_asymmetric_floor": (11, lambda g, x: _resize(g, x, [1, 1, 2, 2], mode="nearest",
                                                                 coordinate_transformation_mode="asymmetric",
                                                                 nearest_mode="floor")),
    "resize_nearest_halfpixel_default": (11, lambda g, x: _resize(g, x, [1, 1, 1.5, 2.5], mode="nearest")),
    "resize_nearest_prefer_ceil_down": (11, lambda g, x: _resize(g, x, [1, 1, 0.5, 0.75], mode="nearest",
                                                                 nearest_mode="round_prefer_ceil")),
    "resize_nearest_tf_half_pixel": (11, lambda g, x: _resize(g, x, [1, 1, 2, 2], mode="nearest",
                                                              coordinate_transformation_mode="tf_half_pixel_for_nn")),
    "resize_linear_half_pixel": (11, lambda g, x: _resize(g, x, [1, 1, 2, 2], mode="linear")),
    "resize_linear_pytorch_half_pixel_down": (11, lambda g, x: _resize(
        g, x, [1, 1, 0.5, 0.5], mode="linear", coordinate_transformation_mode="pytorch_half_pixel")),
    "resize_linear_align_corners_sizes": (11, lambda g, x: _resize(
        g, x, sizes=_shape_sizes(g, x, [9, 11]), mode="linear", coordinate_transformation_mode="align_corners")),
    "resize_linear_asymmetric": (11, lambda g, x: _resize(g, x, [1, 1, 1.5, 3], mode="linear",
                                                          coordinate_transformation_mode="asymmetric")),
    "pow_float_exponent": (11, lambda g, x: g.op("Pow", [g.op("Sigmoid", [x])[0], g.const(1.5)])[0]),
    "pow_int_exponent": (12, lambda g, x: g.op("Pow", [x, g.const(3, np.int64)])[0]),
    "sqrt": (11, lambda g, x: g.op("Sqrt", [g.op("Add", [g.op("Mul", [x, x])[0], g.const(1e-3)])[0]])[0]),
    "reducemean_spatial_keepdims": (11, lambda g, x: _reduce_mean(g, x, [2, 3], 1)),
    "reducemean_channels_dropped": (11, lambda g, x: _reduce_mean(g, x, [1], 0)),
    "erf_gelu": (11, lambda g, x: g.op("Mul", [g.op("Mul", [x, g.op("Add", [g.op("Erf", [g.op(
        "Div", [x, g.const(1.4142135)])[0]])[0], g.const(1.0)])[0]])[0], g.const(0.5)])[0]),
    "matmul_weight_and_bias": (11, lambda g, x: g.op("Add", [g.op("MatMul", [g.op(
        "Transpose", [x], perm=[0, 2, 3, 1])[0], g.w(4, 5)])[0], g.w(5)])[0]),
    "matmul_weight_no_bias": (11, lambda g, x: g.op("MatMul", [x, g.w(6, 3)])[0]),
    "layernorm_last_axis": (17, lambda g, x: g.op("LayerNormalization", [x, g.w(6), g.w(6)], axis=-1,
                                                  epsilon=1e-5)[0]),
    "layernorm_two_axes_no_bias": (17, lambda g, x: g.op("LayerNormalization", [x, g.w(6, 6)], axis=-2)[0]),
    "logsoftmax_channels": (11, lambda g, x: g.op("LogSoftmax", [x], axis=1)[0]),
    "logsoftmax_last": (11, lambda g, x: g.op("LogSoftmax", [x], axis=-1)[0]),
    "reducesum_spatial_keepdims": (11, lambda g, x: _reduce(g, "ReduceSum", x, [2, 3], 1, 13)),
    "reducesum_channels_dropped": (11, lambda g, x: _reduce(g, "ReduceSum", x, [1], 0, 13)),
    "reducel2_channels_normalise": (11, lambda g, x: g.op("Div", [x, _reduce(g, "ReduceL2", x, [1], 1, 18)])[0]),
    "reducel2_all_axes": (11, lambda g, x: g.op("Mul", [x, g.op("ReduceL2", [x], keepdims=1)[0]])[0]),
    "expand_const_shape": (11, lambda g, x: g.op("Add", [x, g.op("Expand", [g.w(1, 4, 1, 1), g.ints([1, 1, 6, 6])])[0]])[0]),
    "expand_runtime_shape": (11, lambda g, x: g.op("Mul", [x, g.op("Expand", [g.w(4, 1, 6), g.op("Shape", [x])[0]])[0]])[0]),
    "softmax_channels": (11, lambda g, x: g.op("Softmax", [x], axis=1)[0]),
    "softmax_last": (11, lambda g, x: g.op("Softmax", [x], axis=-1)[0]),
    "hardsigmoid": (11, lambda g, x: g.op("HardSigmoid", [x], alpha=0.3, beta=0.4)[0]),
    "hardswish": (14, lambda g, x: g.op("HardSwish", [x])[0]),
    "silu": (11, lambda g, x: g.op("Mul", [x, g.op("Sigmoid", [x])[0]])[0]),
    "split_sizes_concat": (11, lambda g, x: g.op("Concat", [g.op("Relu", [a])[0] if i == 0 else a for i, a in
                                                            enumerate(_split(g, x, [1, 3], 2))], axis=1)[0]),
    "split_equal_sub": (11, lambda g, x: g.op("Sub", _split(g, x, None, 2))[0]),
    "slice_step": (11, lambda g, x: _slice(g, x, [1], [-1], [2], [2])),
    "slice_negative_step": (11, lambda g, x: _slice(g, x, [-1, 5], [-100, 0], [3, 2], [-2, -1])),
    "concat_with_const_scaled": (11, lambda g, x: g.op("Concat", [x, g.op("Mul", [x, g.w(1, 4, 1, 1)])[0]],
                                                       axis=1)[0]),
    "transpose": (11, lambda g, x: g.op("Transpose", [x], perm=[0, 3, 1, 2])[0]),
    "reshape_keep_batch": (11, lambda g, x: g.op("Reshape", [x, g.ints([0, 4, -1])])[0]),
    "pad_constant_asym": (11, lambda g, x: _pad(g, x, [0, 0, 1, 2, 0, 0, 2, 1], "constant", 0.5)),
    "pad_reflect": (11, lambda g, x: _pad(g, x, [0, 0, 2, 1, 0, 0, 1, 2], "reflect")),
    "clip": (11, lambda g, x: _clip(g, x, -0.5, 0.7)),
}
PARAMS = [(name, opset) for name, (first, _) in CASES.items() for opset in (11, 18, 21) if opset >= first]


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = session(str(path))
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("name, opset", PARAMS, ids=[f"{n}-op{o}" for n, o in PARAMS])
def test_op_matches_onnxruntime_at_batch_1_and_2(tmp_path: Path, name: str, opset: int) -> None:
    g = G(opset)
    path = g.save(CASES[name][1](g, "x"), tmp_path / f"{name}.onnx")
    model = onnx_to_torch(path)
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 2):
        x = torch.randn(batch, *IN_SHAPE, generator=gen)
        with torch.no_grad():
            y = model(x)
        ref = _ort(path, x.numpy())
        assert tuple(y.shape) == ref.shape
        np.testing.assert_allclose(y.numpy(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["convtranspose_stride2_outpad", "matmul_weight_and_bias", "layernorm_last_axis"])
def test_weight_ops_become_trainable_parameters(tmp_path: Path, name: str) -> None:
    g = G(18)
    model = onnx_to_torch(g.save(CASES[name][1](g, "x"), tmp_path / "m.onnx")).train()
    params = dict(model.named_parameters())
    assert params, "the op's weights must be nn.Parameters"
    model(torch.randn(2, *IN_SHAPE, generator=torch.Generator().manual_seed(1))).square().mean().backward()
    for pname, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("opset, op, mode", [(9, "Upsample", "nearest"), (9, "Upsample", "linear"),
                                             (10, "Resize", "nearest"), (10, "Resize", "linear")])
def test_upsample_and_resize10_forms(tmp_path: Path, opset: int, op: str, mode: str) -> None:
    """Opset 9 Upsample and opset 10 Resize: (X, scales), asymmetric coordinates, read natively."""
    g = G(opset)
    out = g.op(op, ["x", g.const([1.0, 1.0, 2.0, 1.5])], mode=mode)[0]
    path = g.save(out, tmp_path / f"{op}{opset}.onnx")
    model = onnx_to_torch(path)
    x = torch.randn(2, *IN_SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), _ort(path, x.numpy()), atol=1e-4, rtol=1e-4)
