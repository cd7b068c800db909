"""Every registered format: exact at full rank (float64), truncated = conv with the reconstructed kernel, plain ops."""
from __future__ import annotations

import io

import onnx
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.factorize.formats import FORMATS

TESTED_FORMATS = {"tucker2", "channel_svd", "spatial_svd", "cp", "linear_svd"}


def test_guard_every_format_has_tests():
    assert set(FORMATS.names()) == TESTED_FORMATS, "a registered format lacks tests here: add it to the grids below"


def _exact_cp_conv(n, c, k, r, stride, pad, bias):
    g = torch.Generator().manual_seed(1)
    a, b, h, w = (torch.randn(d, r, generator=g, dtype=torch.float64) for d in (n, c, k, k))
    layer = nn.Conv2d(c, n, k, stride=stride, padding=pad, bias=bias).double()
    layer.weight.data = torch.einsum("or,ir,yr,xr->oiyx", a, b, h, w)
    return layer


CONV_GRID = [(s, p, b, d) for s in (1, 2) for p in (0, 1) for b in (True, False) for d in (1, 2)]


@pytest.mark.parametrize("name", ["tucker2", "channel_svd", "spatial_svd"])
@pytest.mark.parametrize("stride,pad,bias,dil", CONV_GRID)
def test_full_rank_reproduces_dense_conv(name, stride, pad, bias, dil):
    torch.manual_seed(0)
    fmt = FORMATS.get(name)
    layer = nn.Conv2d(5, 7, 3, stride=stride, padding=pad, dilation=dil, bias=bias).double()
    mod = fmt.to_module(layer, fmt.decompose(layer.weight, fmt.max_ranks(layer)))
    x = torch.randn(2, 5, 11, 10, dtype=torch.float64)
    ref = layer(x)
    assert torch.allclose(mod(x), ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("stride,pad,bias,dil", CONV_GRID)
def test_cp_exact_for_a_rank_r_kernel(stride, pad, bias, dil):
    layer = _exact_cp_conv(6, 5, 3, 3, stride, pad, bias)
    layer.dilation = (dil, dil)
    fmt = FORMATS.get("cp")
    mod = fmt.to_module(layer, fmt.decompose(layer.weight, (3,), cp_max_iters=500, cp_time_limit_s=10))
    x = torch.randn(2, 5, 11, 10, dtype=torch.float64)
    assert torch.allclose(mod(x), layer(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_full_rank(bias):
    layer = nn.Linear(9, 6, bias=bias).double()
    fmt = FORMATS.get("linear_svd")
    mod = fmt.to_module(layer, fmt.decompose(layer.weight, fmt.max_ranks(layer)))
    x = torch.randn(4, 9, dtype=torch.float64)
    assert torch.allclose(mod(x), layer(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(TESTED_FORMATS))
def test_truncated_equals_reconstructed_kernel(name):
    torch.manual_seed(0)
    fmt = FORMATS.get(name)
    if name == "linear_svd":
        layer = nn.Linear(16, 12).double()
        x = torch.randn(3, 16, dtype=torch.float64)
    else:
        layer = nn.Conv2d(8, 12, 3, stride=2, padding=1).double()
        x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    ranks = tuple(max(1, m // 3) for m in fmt.max_ranks(layer))
    factors = fmt.decompose(layer.weight, ranks, cp_max_iters=5)
    mod = fmt.to_module(layer, factors)
    w_hat = fmt.reconstruct(factors).reshape(layer.weight.shape)
    if name == "linear_svd":
        ref = F.linear(x, w_hat, layer.bias)
    else:
        ref = F.conv2d(x, w_hat, layer.bias, stride=2, padding=1)
    assert torch.allclose(mod(x), ref, rtol=1e-9, atol=1e-10)
    assert fmt.ranks_of(factors) == ranks
    # build + load_state_dict round trip (how checkpoints are rebuilt)
    rebuilt = fmt.build(layer, ranks).double()
    rebuilt.load_state_dict(mod.state_dict())
    assert torch.equal(rebuilt(x), mod(x))
    # MAC/param formulas agree with the module
    assert fmt.params(layer, ranks) == sum(p.numel() for p in mod.parameters())


@pytest.mark.parametrize("name", sorted(TESTED_FORMATS - {"linear_svd"}))
def test_skip_reasons(name):
    fmt = FORMATS.get(name)
    assert "depthwise" in fmt.check(nn.Conv2d(8, 8, 3, groups=8))
    assert "grouped" in fmt.check(nn.Conv2d(8, 8, 3, groups=2))
    assert "padding_mode" in fmt.check(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"))
    assert fmt.check(nn.Conv2d(8, 8, 3)) is None
    assert fmt.check(nn.Linear(3, 3)) is not None


@pytest.mark.parametrize("name", sorted(TESTED_FORMATS))
def test_exported_onnx_has_only_standard_ops(name):
    fmt = FORMATS.get(name)
    layer = nn.Linear(16, 12) if name == "linear_svd" else nn.Conv2d(8, 12, 3, padding=1)
    x = torch.randn(1, 16) if name == "linear_svd" else torch.randn(1, 8, 8, 8)
    ranks = tuple(max(1, m // 2) for m in fmt.max_ranks(layer))
    mod = fmt.to_module(layer, fmt.decompose(layer.weight, ranks, cp_max_iters=2)).eval()
    buf = io.BytesIO()
    torch.onnx.export(mod, (x,), buf, dynamo=False, opset_version=17)
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert ops <= {"Conv", "Gemm", "MatMul", "Add"}, ops
