"""Every registered format: exact at full rank (float64), truncated = conv with the reconstructed kernel, plain ops."""
from __future__ import annotations

import io

import onnx
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.factorize.formats import FORMATS
from pipeline.factorize.formats.base import dense_macs
from tests.helpers.ort import session

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


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["tucker2", "channel_svd", "spatial_svd"])
@pytest.mark.parametrize("stride,pad,bias,dil", CONV_GRID)
def test_full_rank_reproduces_dense_conv(name, stride, pad, bias, dil):
    torch.manual_seed(0)
    fmt = FORMATS.get(name)
    layer = nn.Conv2d(5, 7, 3, stride=stride, padding=pad, dilation=dil, bias=bias).double()
    mod = fmt.to_module(layer, fmt.decompose(layer.weight, fmt.max_ranks(layer)))
    x = torch.randn(2, 5, 11, 10, dtype=torch.float64)
    assert _rel(mod(x), layer(x)) < 1e-10


@pytest.mark.parametrize("name,kernel", [("channel_svd", 1), ("channel_svd", (3, 5)), ("tucker2", (3, 5)),
                                         ("spatial_svd", (3, 5)), ("spatial_svd", (5, 3))])
@pytest.mark.parametrize("stride,pad,bias", [(s, p, b) for s in (1, 2) for p in (0, 1) for b in (True, False)])
def test_full_rank_other_kernels(name, kernel, stride, pad, bias):
    torch.manual_seed(0)
    fmt = FORMATS.get(name)
    layer = nn.Conv2d(6, 4, kernel, stride=stride, padding=pad, bias=bias).double()
    assert fmt.check(layer) is None
    mod = fmt.to_module(layer, fmt.decompose(layer.weight, fmt.max_ranks(layer)))
    x = torch.randn(2, 6, 12, 11, dtype=torch.float64)
    assert _rel(mod(x), layer(x)) < 1e-10


@pytest.mark.parametrize("stride,pad,bias,dil", CONV_GRID)
def test_cp_exact_for_a_rank_r_kernel(stride, pad, bias, dil):
    # CP has no "full rank" that is exact for every kernel, so the exact case is a kernel of CP rank 3.
    layer = _exact_cp_conv(6, 5, 3, 3, stride, pad, bias)
    layer.dilation = (dil, dil)
    fmt = FORMATS.get("cp")
    mod = fmt.to_module(layer, fmt.decompose(layer.weight, (3,), cp_max_iters=500, cp_time_limit_s=30, cp_tol=0))
    x = torch.randn(2, 5, 11, 10, dtype=torch.float64)
    assert _rel(mod(x), layer(x)) < 1e-8


def test_cp_is_bounded_and_reports_sweeps():
    from pipeline.factorize.formats.cp import cp_als

    w = torch.randn(16, 12, 3, 3, dtype=torch.float64)
    _, sweeps = cp_als(w, 8, max_iters=3, time_limit_s=30, refine_iters=2, tol=0)
    assert sweeps == 5
    _, sweeps = cp_als(w, 8, max_iters=1000, time_limit_s=0.0, refine_iters=0)
    assert sweeps == 0  # deadline already passed: the Tucker initialisation alone
    # More sweeps never make the fit worse than the initialisation on this tensor.
    fmt = FORMATS.get("cp")
    e0 = _rel(fmt.reconstruct(fmt.decompose(w, (8,), cp_max_iters=0, cp_refine_iters=0)), w)
    e1 = _rel(fmt.reconstruct(fmt.decompose(w, (8,), cp_max_iters=30)), w)
    assert e1 < e0 < 1


@pytest.mark.parametrize("name", ["tucker2", "channel_svd", "spatial_svd", "cp"])
@pytest.mark.parametrize("stride,pad,hw", [(1, 1, (9, 9)), (2, 1, (9, 11)), (2, 0, (11, 9)), (1, 0, (8, 10))])
def test_mac_formula_matches_hook_count(name, stride, pad, hw):
    from pipeline.factorize.swap import count_macs_params

    fmt = FORMATS.get(name)
    layer = nn.Conv2d(8, 12, 3, stride=stride, padding=pad)
    x = torch.randn(1, 8, *hw)
    out_hw = tuple(layer(x).shape[-2:])
    ranks = tuple(max(1, m // 2) for m in fmt.max_ranks(layer))
    mod = fmt.build(layer, ranks)
    assert count_macs_params(layer, x)[0] == dense_macs(layer, out_hw)
    # Exact when the input is the smallest one giving out_hw (every case here).
    assert count_macs_params(mod, x) == (fmt.macs(layer, ranks, out_hw), fmt.params(layer, ranks))


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
    assert fmt.check(nn.Conv2d(8, 8, 3, dilation=2)) is None  # dilation is passed to the kxk parts
    assert "Conv2d" in fmt.check(nn.Linear(3, 3))
    assert "asymmetric" in fmt.check(nn.Conv2d(8, 8, (4, 4), padding="same"))


@pytest.mark.parametrize("name", ["tucker2", "channel_svd", "spatial_svd", "cp"])
def test_string_padding_is_resolved(name):
    fmt = FORMATS.get(name)
    for padding in ("same", "valid"):
        layer = nn.Conv2d(5, 6, 3, padding=padding, dilation=2).double()
        layer.weight.data = _exact_cp_conv(6, 5, 3, 2, 1, 0, False).weight.data
        assert fmt.check(layer) is None
        ranks = (2,) if name == "cp" else fmt.max_ranks(layer)
        mod = fmt.to_module(layer, fmt.decompose(layer.weight, ranks, cp_max_iters=500, cp_tol=0))
        x = torch.randn(1, 5, 9, 8, dtype=torch.float64)
        assert _rel(mod(x), layer(x)) < 1e-8


def test_linear_svd_rejects_convs_and_conv_formats_reject_1x1_where_meaningless():
    assert "Linear" in FORMATS.get("linear_svd").check(nn.Conv2d(3, 3, 1))
    assert "1x1" in FORMATS.get("tucker2").check(nn.Conv2d(8, 8, 1))
    assert "1x1" in FORMATS.get("cp").check(nn.Conv2d(8, 8, 1))
    assert "nothing to separate" in FORMATS.get("spatial_svd").check(nn.Conv2d(8, 8, (3, 1)))
    assert FORMATS.get("channel_svd").check(nn.Conv2d(8, 8, 1)) is None


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
    # ONNX Runtime runs it and agrees with torch.
    sess = session(buf.getvalue())
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), mod(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(12, 30), (30, 12), (16, 16)])
def test_gram_factors_are_the_optimal_truncation(shape):
    # Eckart-Young: the rank-r error must equal the tail of the exact SVD spectrum, and the spectrum from the
    # Gram eigendecomposition must match the SVD's.
    from pipeline.factorize.formats.base import balanced_factors, gram_spectrum

    g = torch.Generator().manual_seed(0)
    m = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.logspace(0, -3, shape[1], dtype=torch.float64)
    s = torch.linalg.svdvals(m)
    assert torch.allclose(torch.from_numpy(gram_spectrum(m))[: len(s)], s, rtol=1e-6, atol=1e-12)
    for r in (1, 5, min(shape)):
        left, right = balanced_factors(m, r)
        err = float((m - left @ right).norm())
        assert err == pytest.approx(float(s[r:].norm()), rel=1e-6, abs=1e-10)
    # Balanced: both factors carry sqrt(s).
    left, right = balanced_factors(m, 5)
    assert torch.allclose(left.norm(dim=0), right.norm(dim=1), rtol=1e-8)


def test_tucker2_hooi_never_worse_than_hosvd_and_ranks_are_input_then_output():
    fmt = FORMATS.get("tucker2")
    w = torch.randn(12, 8, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f0 = fmt.decompose(w, (3, 5))
    f2 = fmt.decompose(w, (3, 5), hooi_iters=3)
    assert f0["first"].shape == (3, 8, 1, 1) and f0["core"].shape == (5, 3, 3, 3) and f0["last"].shape == (12, 5, 1, 1)
    assert _rel(fmt.reconstruct(f2), w) <= _rel(fmt.reconstruct(f0), w) + 1e-12
