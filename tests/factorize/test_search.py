"""The rank search's pieces on real computation: the bisection over levels and the MAC ladder of a small CNN."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pipeline.config import FactorizeConfig, SearchConfig
from pipeline.factorize.search import bisect_levels, budget_config, ladder
from pipeline.factorize.swap import count_macs_params, factorize_model


def test_bisection_finds_the_last_accepted_level_in_log_calls():
    for n in range(1, 9):
        for last in range(-1, n):
            calls = []

            def accept(i, last=last):
                calls.append(i)
                return i <= last
            got = bisect_levels(n, accept)
            assert got == (None if last < 0 else last)
            assert len(calls) <= n.bit_length() + 1


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10)).eval()


def test_ladder_levels_meet_their_mac_fractions_and_fall_monotonically():
    model, x = _net(), torch.randn(1, 3, 16, 16)
    cfg = FactorizeConfig(selector="search", align=1, search=SearchConfig(levels=(0.7, 0.5, 0.3)))
    levels = ladder(model, cfg, x, None, None)
    dense = count_macs_params(model, x)[0]
    macs = []
    for lv in levels:
        fact, _, structure = factorize_model(model, budget_config(cfg, lv.fraction), x, allocation=lv.allocation)
        assert structure, "every ladder level factorizes something"
        macs.append(count_macs_params(fact, x)[0])
        assert macs[-1] <= lv.fraction * dense * 1.001 or lv is levels[-1]  # the last may be the lowest reachable
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)


def test_search_selector_outside_the_stage_is_the_mildest_level():
    model, x = _net(), torch.randn(1, 3, 16, 16)
    cfg = FactorizeConfig(selector="search", align=1, search=SearchConfig(levels=(0.3, 0.6)))
    fact, _, structure = factorize_model(model, cfg, x)
    assert structure
    assert count_macs_params(fact, x)[0] <= 0.6 * count_macs_params(model, x)[0] * 1.001


def test_fallback_level_is_built_and_timed_never_probed_and_is_the_last_backoff():
    """The whole search on a real CNN, timed by its MAC count (a cost the levels really have) and probed by the
    agreement of a level's outputs with the dense model's on fixed inputs (a real computation per level)."""
    from pipeline.factorize.search import search_ranks

    model, x = _net(), torch.randn(1, 3, 16, 16)
    inputs = torch.randn(64, 3, 16, 16)
    with torch.no_grad():
        ref = model(inputs).argmax(1)
    probed: list[int] = []

    def probe(m: nn.Module) -> float:
        probed.append(count_macs_params(m, x)[0])
        with torch.no_grad():
            return float((m(inputs).argmax(1) == ref).float().mean())

    def time_models(models: dict[str, nn.Module]) -> dict[str, float]:
        return {n: float(count_macs_params(m, x)[0]) for n, m in models.items()}

    cfg = FactorizeConfig(selector="search", align=1,
                          search=SearchConfig(levels=(0.5, 0.3), fallback_level=0.8, backoffs=2, probe_drop=1.0))
    res = search_ranks(model, cfg, x, eval_fn=None, calib_images=None, time_models=time_models, probe=probe,
                       base_val=1.0)
    fractions = [lv.fraction for lv in res.levels]
    assert fractions == [0.8, 0.5, 0.3] and all(lv.kept for lv in res.levels)
    # every probe passes (probe_drop 1): the most aggressive level is chosen, the fallback level was never probed
    assert fractions[res.chosen] == 0.3 and res.levels[0].probe_val is None
    assert res.levels[0].macs not in probed and len(probed) >= 1
    # back-offs: the next milder searched level first, the fallback level last
    assert [fractions[i] for i in res.fallback_levels] == [0.5, 0.8] and len(res.fallbacks) == 2
    assert res.summary()["fallback_fractions"] == [0.5, 0.8]

    one = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, backoffs=1))
    res1 = search_ranks(model, one, x, eval_fn=None, calib_images=None, time_models=time_models, probe=probe,
                        base_val=1.0)
    assert [res1.levels[i].fraction for i in res1.fallback_levels] == [0.8]  # one back-off: the safe one
