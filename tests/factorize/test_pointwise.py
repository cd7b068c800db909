"""1x1 and depthwise convs: both paths (torch modules, ONNX graph) factorize a 1x1 conv by channel SVD where it pays,
keep it dense where it does not, keep depthwise convs dense with the reason, and report the MACs out of reach."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pipeline.config import FactorizeConfig
from pipeline.factorize.onnx_graph import factorize_graph
from pipeline.factorize.plan import out_of_reach_macs
from pipeline.factorize.swap import factorize_model
from tests.helpers.ort import session

SIZE = 8
# the default method (tucker2) and rules, energy ranks (the per-layer reasons under test are the energy path's; the
# default rank search allocates the whole model's ranks in the factorize stage)
CFG = FactorizeConfig(skip_first=False, min_channels=16, align=1, selector="energy")


def _low_rank(n: int, c: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(n, r, generator=g) @ torch.randn(r, c, generator=g)) / r
            + 0.01 * torch.randn(n, c, generator=g))


def _net() -> nn.Sequential:
    """3x3 (16->64), 1x1 (64->64, low rank: pays), depthwise 3x3, 1x1 (64->32, full rank: does not pay)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 1), nn.ReLU(),
                        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU(), nn.Conv2d(64, 32, 1))
    with torch.no_grad():
        net[2].weight.copy_(_low_rank(64, 64, 4, 1)[:, :, None, None])
        net[6].weight.copy_(torch.linalg.qr(torch.randn(64, 64))[0][:32, :, None, None])  # flat spectrum
    return net.eval()


def _onnx(net: nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 16, SIZE, SIZE),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def both_paths():
    net = _net()
    x = torch.randn(2, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    cfg = dataclasses.replace(CFG, energy=0.9)
    fact, rows_t, _ = factorize_model(net, cfg, x[:1])
    proto, rows_g, _ = factorize_graph(_onnx(net), cfg, (16, SIZE, SIZE))
    return net, x, fact, rows_t, proto, rows_g


def test_a_paying_1x1_conv_takes_channel_svd_in_both_paths(both_paths) -> None:
    net, x, fact, rows_t, proto, rows_g = both_paths
    for rows in (rows_t, rows_g):
        row = rows[1]
        assert row.shape == [64, 64, 1, 1] and row.status == "factorized", row.reason
        assert row.format == "channel_svd" and "1x1 conv: channel SVD" in row.reason
        assert row.macs_after < 0.9 * row.macs_before
    assert rows_t[1].ranks == rows_g[1].ranks  # the same spectra and rules
    assert rows_t[1].rel_error == pytest.approx(rows_g[1].rel_error, rel=1e-6)
    pair = fact[2]
    assert isinstance(pair, nn.Sequential) and [m.kernel_size for m in pair] == [(1, 1), (1, 1)]
    with torch.no_grad():
        want = fact(x).numpy()
    sess = session(proto.SerializeToString())
    np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], want, rtol=1e-4, atol=1e-4)


def test_a_1x1_conv_that_does_not_pay_stays_dense_in_both_paths(both_paths) -> None:
    *_, rows_t, _, rows_g = both_paths
    for rows in (rows_t, rows_g):
        row = rows[3]
        assert row.shape == [32, 64, 1, 1] and row.status == "dense"
        assert "1x1 conv: channel SVD" in row.reason and "would not save MACs" in row.reason


def test_depthwise_stays_dense_and_its_macs_are_reported_out_of_reach(both_paths) -> None:
    *_, rows_t, _, rows_g = both_paths
    for rows in (rows_t, rows_g):
        dw = rows[2]
        assert dw.status == "dense" and dw.reason.startswith("depthwise conv")
        summary = out_of_reach_macs(rows)
        assert summary["layers_out_of_reach"] == 1 and summary["macs_out_of_reach"] == dw.macs_before
        total = sum(r.macs_before for r in rows)
        assert summary["out_of_reach_mac_share"] == pytest.approx(dw.macs_before / total)
    # The same numbers from the rows as the stage writes them (dicts).
    assert out_of_reach_macs([dataclasses.asdict(r) for r in rows_t]) == out_of_reach_macs(rows_t)


def test_depthwise_reason_wins_over_the_narrow_layer_rule() -> None:
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8)).eval()
    _, (row,), _ = factorize_model(net, CFG, torch.zeros(1, 8, SIZE, SIZE))
    assert row.reason.startswith("depthwise conv")  # not "narrow layer": the report counts it out of reach


def test_explicit_channel_svd_has_no_note_on_1x1() -> None:
    net = _net()
    _, rows, _ = factorize_model(net, dataclasses.replace(CFG, method="channel_svd", energy=0.9),
                                 torch.zeros(1, 16, SIZE, SIZE))
    assert rows[1].format == "channel_svd" and "1x1 conv" not in rows[1].reason
