"""factorize_model: report rows, dense reasons, no mutation, structure round trips, NaN detection."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.config import FactorizeConfig
from pipeline.errors import ConfigError, NumericalError
from pipeline.factorize.swap import apply_structure, count_macs_params, factorize_model, factorize_with_structure


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU(),
        nn.Conv2d(64, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10),
    ).eval()


def test_report_covers_every_layer_with_reasons_and_input_untouched():
    net = _net()
    before = copy.deepcopy(net.state_dict())
    x = torch.zeros(1, 3, 16, 16)
    new, rows, structure = factorize_model(net, FactorizeConfig(selector="fixed", ratio=0.25, linear_method="linear_svd"), x)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    by = {r.name: r for r in rows}
    assert len(rows) == 7
    assert "first conv" in by["0"].reason and by["0"].status == "dense"
    assert by["2"].status == "factorized" and by["2"].format == "tucker2" and by["2"].ranks == [8, 16]
    assert "depthwise" in by["4"].reason
    assert "narrow" in by["6"].reason and "narrow" in by["8"].reason
    assert by["12"].status == "factorized" and by["12"].format == "linear_svd"
    assert "classifier" in by["14"].reason
    assert 0 < by["2"].rel_error < 1 and by["2"].macs_after < by["2"].macs_before
    assert set(structure) == {"2", "12"}
    assert count_macs_params(new, x)[0] < count_macs_params(net, x)[0]


def test_structure_round_trips_through_apply_structure():
    net, x = _net(), torch.randn(2, 3, 16, 16)
    new, _, structure = factorize_model(net, FactorizeConfig(selector="fixed", ratio=0.5), torch.zeros(1, 3, 16, 16))
    shell = apply_structure(net, structure)
    shell.load_state_dict(new.state_dict())
    assert torch.equal(shell.eval()(x), new(x))
    again = factorize_with_structure(net, structure)
    assert torch.allclose(again(x), new(x), atol=1e-5)


def test_full_rank_model_reproduces_dense_outputs():
    net, x = _net().double(), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    cfg = FactorizeConfig(selector="fixed", ratio=1.0, min_mac_saving=-10.0, min_channels=1, skip_first=False)
    new, rows, _ = factorize_model(net, cfg, x[:1])
    assert sum(r.status == "factorized" for r in rows) >= 3
    assert torch.allclose(new(x), net(x), rtol=1e-8, atol=1e-9)


def test_no_mac_saving_keeps_dense():
    net = _net()
    new, rows, st = factorize_model(net, FactorizeConfig(selector="fixed", ratio=1.0), torch.zeros(1, 3, 16, 16))
    assert not st
    assert any("would not save MACs" in r.reason for r in rows)


def test_auto_picks_a_format_per_layer():
    net = _net()
    new, rows, st = factorize_model(net, FactorizeConfig(method="auto", selector="fixed", ratio=0.25), torch.zeros(1, 3, 16, 16))
    convs = {k: v for k, v in st.items() if isinstance(net.get_submodule(k), nn.Conv2d)}
    assert convs and all(v["format"] in ("tucker2", "channel_svd", "spatial_svd") for v in convs.values())


def test_nan_weights_name_the_layer():
    net = _net()
    with torch.no_grad():
        net[2].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NumericalError, match="'2'"):
        factorize_model(net, FactorizeConfig(), torch.zeros(1, 3, 16, 16))


def test_bad_structure_entries():
    net = _net()
    with pytest.raises(ConfigError, match="does not have"):
        apply_structure(net, {"nope": {"format": "tucker2", "ranks": [4, 4]}})
    with pytest.raises(ConfigError, match="invalid"):
        apply_structure(net, {"2": {"format": "tucker2", "ranks": [4000, 4]}})
    with pytest.raises(ConfigError, match="unknown format"):
        factorize_model(net, FactorizeConfig(method="svd9"), torch.zeros(1, 3, 16, 16))
