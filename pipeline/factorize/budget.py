"""Whole-model budget: allocate per-layer ranks so total MACs (or parameters) reach a target fraction of the original.

Greedy by sensitivity, as AIMET's greedy compression-ratio selection does: each eligible layer gets candidate rank
ratios; its sensitivity at each ratio is the validation-accuracy drop when only that layer is compressed (or the
relative reconstruction error when no evaluation callback is given); then, starting from the dense model, the step
with the smallest sensitivity increase per unit of cost saved is taken until the budget holds.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from pipeline.config import FactorizeConfig
from pipeline.errors import ConfigError
from pipeline.factorize.formats.base import dense_macs, dense_params
from pipeline.factorize.ranks import align_rank

RATIOS = (0.75, 0.5, 0.375, 0.25, 0.125, 0.0625)


def allocate(
    model: nn.Module,
    plans: list,
    cfg: FactorizeConfig,
    example_input: torch.Tensor,
    eval_fn: Callable[[nn.Module], float] | None,
) -> None:
    """Set ``fmt``/``ranks`` of the eligible plans (those the per-layer rules allow) to meet ``cfg.budget``; others stay dense."""
    from pipeline.factorize.swap import set_module

    b = cfg.budget
    if b.latency is not None:
        raise ConfigError("factorize.budget.latency is not supported by this version; use factorize.budget.macs or "
                          "factorize.budget.params (and factorize.method=auto for node-overhead-aware formats)")
    if (b.macs is None) == (b.params is None):
        raise ConfigError("selector=budget needs exactly one of factorize.budget.macs or factorize.budget.params "
                          "(a fraction of the original, e.g. --set factorize.budget.macs=0.3)")
    metric, frac = ("macs", b.macs) if b.macs is not None else ("params", b.params)

    def cost_dense(p) -> int:
        return dense_macs(p.layer, p.out_hw) if metric == "macs" else dense_params(p.layer)

    def cost_of(p, fmt, ranks) -> int:
        return fmt.macs(p.layer, ranks, p.out_hw) if metric == "macs" else fmt.params(p.layer, ranks)

    total0 = sum(cost_dense(p) for p in plans)
    target = frac * total0
    eligible = [p for p in plans if p.fmt is not None]
    base_acc = eval_fn(model) if eval_fn else None
    # options[i] = list of (cost, sensitivity, ranks), dense first, then decreasing ratios
    options: list[list[tuple[int, float, tuple[int, ...]]]] = []
    for p in eligible:
        opts = [(cost_dense(p), 0.0, ())]
        seen = set()
        for r in RATIOS:
            ranks = tuple(align_rank(math.ceil(r * m), cfg.align, m) for m in p.fmt.max_ranks(p.layer))
            if ranks in seen:
                continue
            seen.add(ranks)
            c = cost_of(p, p.fmt, ranks)
            if c >= opts[-1][0]:
                continue
            factors = p.fmt.decompose(p.layer.weight.detach(), ranks, cp_max_iters=cfg.cp_max_iters,
                                      cp_time_limit_s=cfg.cp_time_limit_s)
            if eval_fn is not None:
                set_module(model, p.name, p.fmt.to_module(p.layer, factors))
                try:
                    sens = float(base_acc - eval_fn(model))
                finally:
                    set_module(model, p.name, p.layer)
            else:
                w = p.layer.weight.detach().to(torch.float64)
                sens = float((w - p.fmt.reconstruct(factors).reshape(w.shape)).norm() / w.norm().clamp_min(1e-30))
            opts.append((c, sens, ranks))
        options.append(opts)
    level = [0] * len(eligible)
    total = float(total0)
    while total > target:
        best, best_score = None, None
        for i, opts in enumerate(options):
            if level[i] + 1 >= len(opts):
                continue
            c0, s0, _ = opts[level[i]]
            c1, s1, _ = opts[level[i] + 1]
            score = (max(s1 - s0, 0.0) + 1e-9) / (c0 - c1)
            if best_score is None or score < best_score:
                best, best_score = i, score
        if best is None:
            reachable = (total0 - sum(options[i][0][0] - options[i][-1][0] for i in range(len(options)))) / total0
            raise ConfigError(
                f"factorize.budget.{metric}={frac} cannot be met: the smallest reachable fraction with the eligible "
                f"layers is {reachable:.3f}; raise the budget, lower factorize.min_channels, or set skip_first=false"
            )
        c0 = options[best][level[best]][0]
        level[best] += 1
        total -= c0 - options[best][level[best]][0]
    for p, opts, lv in zip(eligible, options, level):
        if lv == 0:
            p.reason = f"budget: kept dense (the {metric} budget was met without it)"
            p.fmt, p.ranks = None, None
        else:
            p.ranks = opts[lv][2]
            p.note = f"budget: sensitivity {opts[lv][1]:.4f} at ranks {list(p.ranks)}"
