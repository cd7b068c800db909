"""Each format's uses agree: the torch module, the ONNX node chain (run in ONNX Runtime) and the conv of the
reconstructed kernel compute the same function, and ``project`` is ``reconstruct(decompose(.))`` at the same ranks."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from pipeline.factorize.formats import FORMATS
from pipeline.factorize.formats.onnx_nodes import unique_namer
from tests.helpers.ort import session

# (stride, padding, dilation) of the conv under test
GEOMETRIES = {"3x3 pad 1": (1, 1, 1), "3x3 stride 2": (2, 1, 1), "3x3 dilation 2 no pad": (1, 0, 2)}


def _ranks(name: str) -> tuple[int, ...]:
    return (3, 4) if name == "tucker2" else (3,)


def _layer(name: str, geometry: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "linear_svd":
        return nn.Linear(9, 7).double()
    stride, pad, dil = GEOMETRIES[geometry]
    return nn.Conv2d(6, 8, 3, stride=stride, padding=pad, dilation=dil).double()


def _input(layer: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (2, 9) if isinstance(layer, nn.Linear) else (2, 6, 11, 10)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _onnx_attrs(layer: nn.Module) -> dict:
    if isinstance(layer, nn.Linear):
        return {}
    ph, pw = layer.padding
    return {"kernel_shape": list(layer.kernel_size), "strides": list(layer.stride), "pads": [ph, pw, ph, pw],
            "dilations": list(layer.dilation)}


def _run_chain(name: str, layer: nn.Module, factors: dict, x: np.ndarray) -> np.ndarray:
    """The format's ONNX chain as a one-layer model, run by ONNX Runtime (float32)."""
    fmt = FORMATS.get(name)
    bias = numpy_helper.from_array(layer.bias.detach().numpy().astype(np.float32), "b")
    nodes, inits = fmt.to_onnx_nodes(factors, x="x", y="y", name="layer", bias="b", attrs=_onnx_attrs(layer),
                                     dtype=np.float32, unique=unique_namer({"x", "y", "b"}),
                                     in_hw=None if isinstance(layer, nn.Linear) else tuple(x.shape[2:]))
    dims = ["n", *x.shape[1:]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", *(["c", "h", "w"] if x.ndim == 4 else ["f"])])],
                              [bias, *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    assert {n.op_type for n in model.graph.node} <= {"Conv", "Gemm"}
    assert [n.name for n in nodes] == [f"layer.{i}" for i in range(len(nodes))]  # = the Sequential's children
    sess = session(model.SerializeToString())
    return sess.run(None, {"x": x.astype(np.float32)})[0]


def _cases() -> list[tuple[str, str]]:
    return [(n, g) for n in FORMATS.names() for g in (["-"] if n == "linear_svd" else list(GEOMETRIES))]


@pytest.mark.parametrize("name,geometry", _cases())
def test_module_onnx_chain_and_reconstruction_compute_the_same_function(name: str, geometry: str) -> None:
    fmt, layer = FORMATS.get(name), _layer(name, geometry)
    ranks = _ranks(name)
    factors = fmt.decompose(layer.weight.detach(), ranks)
    assert fmt.ranks_of(factors) == ranks
    x = _input(layer)
    w_hat = fmt.reconstruct(factors).reshape(layer.weight.shape)
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            ref = F.linear(x, w_hat, layer.bias)
        else:
            ref = F.conv2d(x, w_hat, layer.bias, layer.stride, layer.padding, layer.dilation)
        got_module = fmt.to_module(layer, factors)(x)
    assert got_module.shape == ref.shape
    torch.testing.assert_close(got_module, ref, rtol=1e-10, atol=1e-10)
    got_onnx = _run_chain(name, layer, factors, x.numpy())
    np.testing.assert_allclose(got_onnx, ref.numpy(), rtol=1e-4, atol=1e-4)
    # Truncated for real: the chain is not the dense layer.
    with torch.no_grad():
        assert not torch.allclose(layer(x), ref, atol=1e-3)


@pytest.mark.parametrize("name", FORMATS.names())
def test_project_equals_reconstruct_of_decompose(name: str) -> None:
    fmt, layer = FORMATS.get(name), _layer(name, "3x3 pad 1")
    w = layer.weight.detach()
    ranks = _ranks(name)
    p = fmt.project(w, ranks)
    assert p.shape == w.shape and p.dtype == torch.float64
    torch.testing.assert_close(p, fmt.reconstruct(fmt.decompose(w, ranks)).reshape(w.shape), rtol=1e-9, atol=1e-9)
    if fmt.exact_projection:
        # A projection: applying it twice changes nothing.
        torch.testing.assert_close(fmt.project(p, ranks), p, rtol=1e-9, atol=1e-9)


def test_tucker2_projection_with_hooi_is_the_hooi_reconstruction() -> None:
    fmt, layer = FORMATS.get("tucker2"), _layer("tucker2", "3x3 pad 1")
    w = layer.weight.detach()
    p = fmt.project(w, (3, 4), hooi_iters=3)
    torch.testing.assert_close(p, fmt.reconstruct(fmt.decompose(w, (3, 4), hooi_iters=3)))
    # HOOI fits at least as well as the HOSVD projection.
    assert float((w - p).norm()) <= float((w - fmt.project(w, (3, 4))).norm()) + 1e-12
