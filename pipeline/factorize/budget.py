"""Whole-model budget: allocate per-layer ranks so total MACs, parameters or measured latency reach a target fraction
of the original.

Greedy by sensitivity, as AIMET's greedy compression-ratio selection does: each eligible layer gets candidate rank
ratios; its sensitivity at each ratio is the validation-accuracy drop when only that layer is compressed (or the
relative reconstruction error when no evaluation callback is given; with calibration statistics, objective=outputs,
the relative output error on the calibration data instead, from the whitened spectrum where that is exact, and
beside a validation drop as its tie-break); then, starting from the dense model, the step
with the smallest sensitivity increase per unit of cost saved is taken until the budget holds. Sensitivities are
computed once per (layer, ratio) within the call.

Latency budgets use :mod:`pipeline.factorize.latency` (ORT, 1 thread, batch 1, cached on disk): the whole-model
figure is the sum of the conv/linear layers' own latencies, which is what factorization changes.

Registered as the model-scope selector ``budget`` (:class:`BudgetSelector`): the factorizer plans every layer with
the fixed-ratio selector, then hands all plans to it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from pipeline.config import FactorizeConfig
from pipeline.errors import ConfigError
from pipeline.factorize.data_aware import OutputErrors
from pipeline.factorize.formats.base import dense_macs, dense_params
from pipeline.factorize.formats.stats import LayerStats
from pipeline.factorize.latency import measure_variants
from pipeline.factorize.plan import Plan, set_module
from pipeline.factorize.ranks import SELECTORS, ModelSelector, align_rank

RATIOS = (0.75, 0.5, 0.375, 0.25, 0.125, 0.0625)
#: weight of the output error beside a measured validation drop: small, so it orders layers whose drop is the same
#: (accuracy on a few hundred images moves in steps) without outvoting a measured drop
OUTPUT_TIE_BREAK = 0.01


def allocate(
    model: nn.Module,
    plans: list[Plan],
    cfg: FactorizeConfig,
    example_input: torch.Tensor,
    eval_fn: Callable[[nn.Module], float] | None,
    stats: dict[str, LayerStats] | None = None,
) -> None:
    """Set ``fmt``/``ranks`` of the eligible plans (those the per-layer rules allow) to meet ``cfg.budget``; others stay dense.

    ``stats`` (objective=outputs): each candidate is decomposed data-aware and its cost includes the output error.
    """
    metric, frac = budget_target(cfg)
    opts = BudgetOptions.measure(model, plans, cfg, metric, eval_fn, stats)
    opts.apply(opts.levels(frac, metric), metric)


def budget_target(cfg: FactorizeConfig) -> tuple[str, float]:
    """The one whole-model target ``cfg.budget`` names: ``(metric, fraction)``.

    Raises:
        ConfigError: none or several of macs/params/latency given, or a fraction outside (0, 1].
    """
    b = cfg.budget
    given = [(k, v) for k, v in (("macs", b.macs), ("params", b.params), ("latency", b.latency)) if v is not None]
    if len(given) != 1:
        raise ConfigError("selector=budget needs exactly one of factorize.budget.macs, factorize.budget.params or "
                          "factorize.budget.latency (a fraction of the original, e.g. --set factorize.budget.macs=0.3); "
                          f"got {', '.join(k for k, _ in given) or 'none'}")
    metric, frac = given[0]
    if not 0 < frac <= 1:
        raise ConfigError(f"factorize.budget.{metric}={frac} must be a fraction in (0, 1]")
    return metric, float(frac)


class BudgetOptions:
    """Each eligible layer's candidate ranks with their cost and measured sensitivity, measured once; the greedy
    allocation to any target fraction then costs nothing (the rank search walks several targets on one set)."""

    def __init__(self, plans: list[Plan], eligible: list[Plan],
                 options: list[list[tuple[float, float, tuple[int, ...]]]], total0: float) -> None:
        self.plans, self.eligible, self.options, self.total0 = plans, eligible, options, total0

    @classmethod
    def measure(cls, model: nn.Module, plans: list[Plan], cfg: FactorizeConfig, metric: str,
                eval_fn: Callable[[nn.Module], float] | None,
                stats: dict[str, LayerStats] | None = None) -> "BudgetOptions":
        """Candidates of every eligible plan in ``metric`` (macs | params | latency) and their sensitivities."""
        b = cfg.budget
        eligible = [p for p in plans if p.fmt is not None]

        # Candidate ranks per eligible layer: dense first, then decreasing ratios (aligned, deduplicated).
        cand_ranks: list[list[tuple[int, ...]]] = []
        for p in eligible:
            seen: list[tuple[int, ...]] = []
            for r in RATIOS:
                ranks = tuple(align_rank(math.ceil(r * m), cfg.align, m) for m in p.fmt.max_ranks(p.layer))
                if ranks not in seen:
                    seen.append(ranks)
            cand_ranks.append(seen)

        # Costs: dense cost of every layer (the whole-model total) and of each candidate.
        if metric == "latency":
            # Per-layer ORT latency; the whole-model total is the sum over conv/linear layers (they dominate CNNs).
            # Each layer's variants are timed together, so the ratios within a layer come from one run.
            dense_cost: dict[str, float] = {}
            cand_cost: list[list[float]] = []
            elig_names = {p.name for p in eligible}
            for p in plans:
                if p.name in elig_names:
                    continue
                if p.reason == "not reached by the forward pass":
                    dense_cost[p.name] = 0.0
                else:
                    dense_cost[p.name] = measure_variants(p.layer, p.in_hw, [(None, None)], target=b.target)[0]
            for p, ranks_list in zip(eligible, cand_ranks):
                ms = measure_variants(p.layer, p.in_hw, [(None, None)] + [(p.fmt.name, r) for r in ranks_list],
                                      target=b.target)
                dense_cost[p.name] = ms[0]
                cand_cost.append(ms[1:])
        else:
            dense_cost = {p.name: float(dense_macs(p.layer, p.out_hw) if metric == "macs" else dense_params(p.layer))
                          for p in plans}
            cand_cost = [[float(p.fmt.macs(p.layer, r, p.out_hw) if metric == "macs" else p.fmt.params(p.layer, r))
                          for r in ranks_list] for p, ranks_list in zip(eligible, cand_ranks)]

        base_acc = eval_fn(model) if eval_fn else None
        # options[i] = list of (cost, sensitivity, ranks): dense first, then only candidates cheaper than the last kept.
        options: list[list[tuple[float, float, tuple[int, ...]]]] = []
        dopts = {"hooi_iters": cfg.hooi_iters, "cp_max_iters": cfg.cp_max_iters, "cp_time_limit_s": cfg.cp_time_limit_s}
        for p, ranks_list, costs in zip(eligible, cand_ranks, cand_cost):
            opts: list[tuple[float, float, tuple[int, ...]]] = [(dense_cost[p.name], 0.0, ())]
            st = (stats or {}).get(p.name)
            curve = OutputErrors(p.fmt, p.layer.weight, st, **dopts) if st is not None else None
            for ranks, c in zip(ranks_list, costs):
                if c >= opts[-1][0]:
                    continue
                if curve is not None and eval_fn is None:
                    # Output-error curve only: no decomposition needed where the whitened spectrum gives it exactly.
                    opts.append((c, curve.at(ranks), ranks))
                    continue
                factors = p.fmt.decompose(p.layer.weight.detach(), ranks, stats=st, **dopts)
                if eval_fn is not None:
                    # Sensitivity = accuracy drop when only this layer is compressed at this ratio.
                    set_module(model, p.name, p.fmt.to_module(p.layer, factors))
                    try:
                        sens = float(base_acc - eval_fn(model))
                    finally:
                        set_module(model, p.name, p.layer)
                    if curve is not None:
                        sens += OUTPUT_TIE_BREAK * curve.at(ranks, factors)
                else:
                    w = p.layer.weight.detach().to(torch.float64)
                    sens = float((w - p.fmt.reconstruct(factors).reshape(w.shape)).norm() / w.norm().clamp_min(1e-30))
                opts.append((c, sens, ranks))
            options.append(opts)
        return cls(plans, eligible, options, float(sum(dense_cost.values())))

    def reachable(self) -> float:
        """The smallest fraction of the whole-model cost the eligible layers can reach (every one at its lowest rank)."""
        return (self.total0 - sum(o[0][0] - o[-1][0] for o in self.options)) / self.total0

    def levels(self, frac: float, metric: str = "macs", strict: bool = True) -> list[int]:
        """Greedy allocation down to ``frac`` of the whole-model cost: the candidate index of each eligible layer.

        From the dense model, the step with the smallest sensitivity increase per unit of cost saved is taken until
        the target holds. ``strict``: an unreachable target raises; otherwise the lowest reachable allocation."""
        level = [0] * len(self.eligible)
        total, target = self.total0, frac * self.total0
        while total > target:
            best, best_score = None, None
            for i, opts in enumerate(self.options):
                if level[i] + 1 >= len(opts):
                    continue
                c0, s0, _ = opts[level[i]]
                c1, s1, _ = opts[level[i] + 1]
                score = (max(s1 - s0, 0.0) + 1e-9) / (c0 - c1)
                if best_score is None or score < best_score:
                    best, best_score = i, score
            if best is None:
                if not strict:
                    break
                raise ConfigError(
                    f"factorize.budget.{metric}={frac} cannot be met: the smallest reachable fraction with the eligible "
                    f"layers ({len(self.eligible)} of {len(self.plans)}) is {self.reachable():.3f}; raise the budget "
                    "to at least that, lower factorize.min_channels, or set factorize.skip_first=false"
                )
            c0 = self.options[best][level[best]][0]
            level[best] += 1
            total -= c0 - self.options[best][level[best]][0]
        return level

    def allocation(self, level: list[int]) -> dict[str, tuple[int, ...] | None]:
        """``{layer name: ranks, or None for dense}`` of one greedy allocation."""
        return {p.name: (opts[lv][2] if lv else None) for p, opts, lv in zip(self.eligible, self.options, level)}

    def apply(self, level: list[int], metric: str) -> None:
        """Set the eligible plans' ranks (or dense with the reason) to one greedy allocation."""
        for p, opts, lv in zip(self.eligible, self.options, level):
            if lv == 0:
                p.reason = f"budget: kept dense (the {metric} budget was met without it)"
                p.fmt, p.ranks = None, None
            else:
                p.ranks = opts[lv][2]
                p.note = f"budget: sensitivity {opts[lv][1]:.4f} at ranks {list(p.ranks)}"


class BudgetSelector(ModelSelector):
    """``selector=budget``: the whole model's ranks against ``factorize.budget`` (one of macs, params, latency)."""

    per_layer = "fixed"

    def allocate(self, model: nn.Module, plans: list[Plan], cfg: FactorizeConfig, example_input: torch.Tensor,
                 eval_fn: Callable[[nn.Module], float] | None, stats: dict[str, LayerStats] | None = None) -> None:
        """See :func:`allocate`."""
        allocate(model, plans, cfg, example_input, eval_fn, stats)


SELECTORS.add("budget", BudgetSelector())
