"""Rank selectors on hand-made spectra, alignment, and the budget allocator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import BudgetConfig, FactorizeConfig
from pipeline.errors import ConfigError
from pipeline.factorize.ranks import SELECTORS, RankContext, align_rank, effective_rank, energy_rank, vbmf_rank
from pipeline.factorize.swap import count_macs_params, factorize_model
from tests.helpers.toy_models import plain_cnn

TESTED_SELECTORS = {"energy", "erank", "vbmf", "fixed", "budget", "search"}


def test_guard_every_selector_has_tests():
    assert set(SELECTORS.names()) == TESTED_SELECTORS


def test_energy_rank_exact():
    s = np.sqrt(np.array([50.0, 30.0, 15.0, 5.0]))  # energies 50/30/15/5 %
    assert energy_rank(s, 0.5) == 1
    assert energy_rank(s, 0.8) == 2
    assert energy_rank(s, 0.81) == 3
    assert energy_rank(s, 1.0) == 4
    ctx = RankContext([s], [(4, 4)], (4,), FactorizeConfig(energy=0.8))
    assert SELECTORS.get("energy")(ctx) == (2,)


def test_effective_rank():
    assert effective_rank(np.ones(7)) == pytest.approx(7.0)
    assert effective_rank(np.array([3.0, 0, 0])) == pytest.approx(1.0)
    assert 1 < effective_rank(np.array([4.0, 2.0, 1.0])) < 3
    ctx = RankContext([np.ones(6)], [(6, 6)], (6,), FactorizeConfig(erank_factor=0.5))
    assert SELECTORS.get("erank")(ctx) == (3,)


def test_vbmf_recovers_rank_of_low_rank_plus_noise():
    rng = np.random.default_rng(0)
    L, M, r = 60, 120, 7
    signal = rng.standard_normal((L, r)) @ rng.standard_normal((r, M)) * 3
    mat = signal + 0.5 * rng.standard_normal((L, M))
    s = np.linalg.svd(mat, compute_uv=False)
    assert vbmf_rank(s, (L, M)) == r
    assert vbmf_rank(mat) == r and vbmf_rank(mat.T) == r  # the matrix itself, either orientation
    assert vbmf_rank(0.5 * rng.standard_normal((L, M))) <= 2  # pure noise: (almost) nothing kept
    ctx = RankContext([s], [(L, M)], (L,), FactorizeConfig())
    assert SELECTORS.get("vbmf")(ctx) == (r,)


def test_fixed_and_budget_per_layer_candidates():
    ctx = RankContext([np.ones(64)], [(64, 64)], (64, 32), FactorizeConfig(ratio=0.25))
    assert SELECTORS.get("fixed")(ctx) == (16, 8)
    assert SELECTORS.get("budget")(ctx) == (16, 8)


def test_budget_is_a_registered_model_scope_selector():
    from pipeline.factorize.ranks import ModelSelector, model_selector

    budget = SELECTORS.get("budget")
    assert isinstance(budget, ModelSelector) and model_selector("budget") is budget and budget.per_layer == "fixed"
    assert all(model_selector(n) is None for n in ("energy", "erank", "vbmf", "fixed"))


@pytest.mark.parametrize("r,align,mx,expect", [(61, 8, 256, 64), (64, 8, 256, 64), (1, 8, 256, 8), (300, 8, 256, 256),
                                                (17, 16, 256, 32), (5, 1, 256, 5), (0, 8, 4, 4)])
def test_align_rank(r, align, mx, expect):
    assert align_rank(r, align, mx) == expect


def _net() -> nn.Module:
    return plain_cnn(3, (32, 64, 64), 10)


def test_budget_reaches_mac_target_with_and_without_eval():
    net, x = _net(), torch.zeros(1, 3, 16, 16)
    macs0, _ = count_macs_params(net, x)
    cfg = FactorizeConfig(selector="budget", budget=BudgetConfig(macs=0.5), min_mac_saving=0.0)
    new, rows, st = factorize_model(net, cfg, x)
    assert count_macs_params(new, x)[0] <= 0.5 * macs0 * 1.001
    data = torch.randn(32, 3, 16, 16)
    labels = net(data).argmax(1)
    evalf = lambda m: float((m(data).argmax(1) == labels).float().mean())
    new2, _, _ = factorize_model(net, cfg, x, eval_fn=evalf)
    assert count_macs_params(new2, x)[0] <= 0.5 * macs0 * 1.001


def test_unreachable_budget_is_a_clear_error():
    cfg = FactorizeConfig(selector="budget", budget=BudgetConfig(macs=0.01))
    with pytest.raises(ConfigError, match="smallest reachable fraction"):
        factorize_model(_net(), cfg, torch.zeros(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="exactly one"):
        factorize_model(_net(), FactorizeConfig(selector="budget"), torch.zeros(1, 3, 16, 16))
