"""Graph-level factorization (pipeline.factorize.onnx_graph): Conv nodes rewritten into Conv chains on the ONNX graph,
checked with ONNX Runtime: full rank reproduces the Conv exactly (stride, pads, auto_pad, dilation, bias), a truncated
rank computes the conv of the reconstructed kernel, and the output graph holds only standard ops."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.config import FactorizeConfig
from pipeline.errors import NumericalError
from pipeline.factorize.onnx_graph import GRAPH_FORMATS, decompose, factorize_graph, reconstruct
from tests.helpers.ort import session

C_IN, C_OUT, SIZE = 12, 16, 11

# Every Conv is eligible and nothing is aligned or kept dense for MACs: the tests choose the ranks.
OPEN = FactorizeConfig(skip_first=False, min_channels=1, align=1, min_mac_saving=-0.99)
FULL = dataclasses.replace(OPEN, selector="fixed", ratio=1.0)


def _conv_model(weight: np.ndarray, bias: np.ndarray | None = None, **attrs: object) -> onnx.ModelProto:
    """input -> Conv(weight, bias, attrs) -> Elu (an op the torch importer lacks) -> output, dynamic batch."""
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "b"))
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["c"], name="conv", **attrs),
             helper.make_node("Elu", ["c"], ["y"], name="elu")]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C_IN, SIZE, SIZE])
    graph = helper.make_graph(nodes, "g", [x_info],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", C_OUT, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = session(model.SerializeToString())
    return sess.run(None, {"x": x})[0]


def _inputs() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((2, C_IN, SIZE, SIZE)).astype(np.float32)


GEOMETRIES = {
    "3x3 pad 1": dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "3x3 stride 2 asym pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0]),
    "3x3 dilation 2": dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2]),
    "5x3 stride (2,1)": dict(kernel_shape=[5, 3], strides=[2, 1], pads=[2, 1, 2, 1]),
    "3x3 SAME_UPPER stride 2": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "1x1": dict(kernel_shape=[1, 1]),
}


EXACT = [f for f in GRAPH_FORMATS if f != "cp"]  # CP-ALS is an approximation even at full rank


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("with_bias", [True, False])
def test_full_rank_rewrite_reproduces_the_conv(method: str, geometry: str, with_bias: bool) -> None:
    attrs = GEOMETRIES[geometry]
    kh, kw = attrs["kernel_shape"]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((C_OUT, C_IN, kh, kw)) * 0.2
    cfg, tol = dataclasses.replace(FULL, method=method), 1e-12
    if method == "spatial_svd" and (kh, kw) != (1, 1):
        # Full spatial rank costs more MACs than the conv; a kernel of exact spatial rank C_IN stays exact and pays.
        left, right = rng.standard_normal((C_IN * kh, C_IN)), rng.standard_normal((C_IN, C_OUT * kw))
        w = (left @ right).reshape(C_IN, kh, C_OUT, kw).transpose(2, 0, 1, 3) * 0.05
        cfg = dataclasses.replace(cfg, ratio=C_IN / min(C_IN * kh, C_OUT * kw))
        tol = 1e-6  # the kernel is stored as float32: exactly rank C_IN only to float32 rounding
    b = rng.standard_normal(C_OUT) if with_bias else None
    model = _conv_model(w, b, **attrs)
    new, rows, structure = factorize_graph(model, cfg, (C_IN, SIZE, SIZE))
    (row,) = rows
    assert row.status == "factorized", row.reason
    expect_fmt = "channel_svd" if (kh, kw) == (1, 1) else method
    assert row.format == expect_fmt and structure == {"conv": {"format": expect_fmt, "ranks": row.ranks}}
    assert row.rel_error < tol
    convs = [n for n in new.graph.node if n.op_type == "Conv"]
    assert len(convs) == {"tucker2": 3, "channel_svd": 2, "spatial_svd": 2}[expect_fmt]
    assert [n.name for n in convs] == [f"conv.{i}" for i in range(len(convs))]
    assert convs[-1].output[0] == "c" and (("b" in convs[-1].input) == with_bias)
    assert "w" not in {t.name for t in new.graph.initializer}  # the dense kernel is not shipped twice
    x = _inputs()
    ref, got = _run(model, x), _run(new, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", GRAPH_FORMATS)
def test_truncated_rank_computes_the_reconstructed_kernel(method: str) -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((C_OUT, C_IN, 3, 3))
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1])
    model = _conv_model(w, rng.standard_normal(C_OUT), **attrs)
    cfg = dataclasses.replace(OPEN, method=method, selector="fixed", ratio=0.5)
    new, (row,), _ = factorize_graph(model, cfg, (C_IN, SIZE, SIZE))
    ranks = tuple(row.ranks)
    expect = {"tucker2": (6, 8), "channel_svd": (8,), "spatial_svd": (18,), "cp": (8,)}[method]
    assert row.status == "factorized" and ranks == expect
    w_hat = reconstruct(method, decompose(method, w.astype(np.float32), ranks))
    assert 0.05 < row.rel_error < 1.0
    np.testing.assert_allclose(row.rel_error, np.linalg.norm(w.astype(np.float32) - w_hat) / np.linalg.norm(
        w.astype(np.float32)), rtol=1e-6)
    ref = _conv_model(w_hat, numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b")), **attrs)
    x = _inputs()
    np.testing.assert_allclose(_run(new, x), _run(ref, x), atol=1e-4, rtol=1e-4)
    assert not np.allclose(_run(new, x), _run(model, x), atol=1e-3)  # truly truncated


def test_output_graph_has_only_standard_ops_and_passes_the_checker() -> None:
    rng = np.random.default_rng(3)
    model = _conv_model(rng.standard_normal((C_OUT, C_IN, 3, 3)), None, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    new, _, _ = factorize_graph(model, dataclasses.replace(OPEN, selector="energy", energy=0.8), (C_IN, SIZE, SIZE))
    onnx.checker.check_model(new, full_check=True)
    assert {n.domain for n in new.graph.node} <= {"", "ai.onnx"}
    assert {n.op_type for n in new.graph.node} == {"Conv", "Elu"}
    assert onnx.load_from_string(model.SerializeToString()).graph.node[0].name == "conv"  # input not modified
    assert len(model.graph.node) == 2


def test_auto_uses_tucker2_on_the_graph_and_says_why() -> None:
    rng = np.random.default_rng(4)
    model = _conv_model(rng.standard_normal((C_OUT, C_IN, 3, 3)), None, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    _, (row,), _ = factorize_graph(model, dataclasses.replace(FULL, method="auto", ratio=0.5), (C_IN, SIZE, SIZE))
    assert row.format == "tucker2" and "auto" in row.reason and "Tucker-2 used" in row.reason


def test_ranks_follow_the_selector_and_alignment() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((C_OUT, C_IN, 3, 3))
    model = _conv_model(w, None, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    cfg = dataclasses.replace(OPEN, method="channel_svd", selector="energy", energy=0.5, align=8)
    _, (row,), _ = factorize_graph(model, cfg, (C_IN, SIZE, SIZE))
    s = np.linalg.svd(w.reshape(C_OUT, -1), compute_uv=False)
    k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.5 - 1e-12) + 1)
    assert row.ranks == [min(-(-k // 8) * 8, C_OUT)]


def test_dense_reasons_are_reported() -> None:
    rng = np.random.default_rng(6)
    grouped = _conv_model(rng.standard_normal((C_OUT, C_IN // 4, 3, 3)), None, kernel_shape=[3, 3], group=4)
    _, (row,), structure = factorize_graph(grouped, FULL, (C_IN, SIZE, SIZE))
    assert row.status == "dense" and "grouped" in row.reason and structure == {}
    plain = _conv_model(rng.standard_normal((C_OUT, C_IN, 3, 3)), None, kernel_shape=[3, 3])
    _, (row,), _ = factorize_graph(plain, FactorizeConfig(), (C_IN, SIZE, SIZE))  # defaults: skip_first
    assert row.status == "dense" and "skip_first" in row.reason
    _, (row,), _ = factorize_graph(plain, dataclasses.replace(FULL, min_channels=32), (C_IN, SIZE, SIZE))
    assert "min_channels" in row.reason
    _, (row,), _ = factorize_graph(plain, dataclasses.replace(FULL, min_mac_saving=0.1), (C_IN, SIZE, SIZE))
    assert "would not save MACs" in row.reason


def test_nan_kernel_names_the_node() -> None:
    w = np.ones((C_OUT, C_IN, 3, 3))
    w[0, 0, 0, 0] = np.nan
    model = _conv_model(w, None, kernel_shape=[3, 3])
    with pytest.raises(NumericalError, match="'conv'"):
        factorize_graph(model, FULL, (C_IN, SIZE, SIZE))
