"""factorize_model: report rows, dense reasons, no mutation, structure round trips, NaN detection."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from pipeline.config import BudgetConfig, FactorizeConfig
from pipeline.errors import ConfigError, NumericalError
from pipeline.factorize.swap import (BREAK_EVEN_MARGIN, apply_structure, count_macs_params, factorize_model,
                                    factorize_with_structure)


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


def _wide_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


def _parse_ms(reason: str) -> tuple[float, float]:
    m = re.search(r"measured ([0-9.]+) ms vs dense ([0-9.]+) ms", reason)
    assert m, reason
    return float(m.group(1)), float(m.group(2))


def test_break_even_decisions_follow_the_measurements(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    net, x = _wide_net(), torch.zeros(1, 3, 8, 8)
    cfg = FactorizeConfig(method="auto", selector="fixed", ratio=0.25, min_channels=1, break_even=True)
    _, rows, structure = factorize_model(net, cfg, x)
    measured = [r for r in rows if "break_even" in r.reason]
    assert len(measured) == 3  # the three non-stem convs
    for r in measured:
        fact_ms, dense_ms = _parse_ms(r.reason)
        if r.status == "factorized":
            assert fact_ms <= (1 - BREAK_EVEN_MARGIN) * dense_ms
            assert structure[r.name] == {"format": r.format, "ranks": r.ranks}
        else:
            assert "not measurably faster" in r.reason and fact_ms > (1 - BREAK_EVEN_MARGIN) * dense_ms


def test_auto_with_break_even_keeps_the_fastest_measured_format(tmp_path, monkeypatch):
    from pipeline.factorize.latency import measure_variants
    from pipeline.factorize.swap import plan_layers, probe_sizes

    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    net, x = _wide_net(), torch.zeros(1, 3, 8, 8)
    cfg = FactorizeConfig(method="auto", selector="fixed", ratio=0.25, min_channels=1, break_even=True)
    _, rows, _ = factorize_model(net, cfg, x)
    plans = {p.name: p for p in plan_layers(net, cfg, probe_sizes(net, x))}
    for r in rows:
        p = plans[r.name]
        if not p.candidates:
            continue
        ms = measure_variants(p.layer, p.in_hw, [(None, None)] + [(f.name, rk) for f, rk, _ in p.candidates])
        best = min(range(len(p.candidates)), key=lambda i: ms[1 + i])
        if r.status == "factorized":
            assert (r.format, tuple(r.ranks)) == (p.candidates[best][0].name, p.candidates[best][1])
        else:
            assert ms[1 + best] > (1 - BREAK_EVEN_MARGIN) * ms[0]


def test_latency_budget_is_met_by_the_measured_layer_latencies(tmp_path, monkeypatch):
    from pipeline.factorize.latency import measure_variants
    from pipeline.factorize.swap import probe_sizes

    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1))
    x = torch.zeros(1, 3, 12, 12)
    cfg = FactorizeConfig(selector="budget", budget=BudgetConfig(latency=0.7), min_mac_saving=0.0)
    _, rows, structure = factorize_model(net, cfg, x)
    assert structure
    sizes = probe_sizes(net, x)
    total0 = total1 = 0.0
    for r in rows:
        layer = net.get_submodule(r.name)
        in_hw = sizes[r.name][0]
        # All cached by the allocation: the same numbers it used.
        dense = measure_variants(layer, in_hw, [(None, None)])[0]
        total0 += dense
        total1 += dense if r.status == "dense" else measure_variants(layer, in_hw, [(r.format, tuple(r.ranks))])[0]
    assert total1 <= 0.7 * total0
    with pytest.raises(ConfigError, match="smallest reachable fraction"):
        factorize_model(net, FactorizeConfig(selector="budget", budget=BudgetConfig(latency=0.001)), x)


def test_ranks_above_the_maximum_are_clamped_and_said_so():
    net = _net()
    cfg = FactorizeConfig(selector="erank", erank_factor=50.0, min_mac_saving=-100.0, align=1)
    _, rows, structure = factorize_model(net, cfg, torch.zeros(1, 3, 16, 16))
    row = next(r for r in rows if r.name == "2")
    assert row.status == "factorized" and row.ranks == [32, 64] and "clamped" in row.reason
