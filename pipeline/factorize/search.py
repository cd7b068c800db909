"""The default rank search (``factorize.selector=search``): ranks chosen against the accuracy budget and the
target's measured latency instead of a fixed threshold.

1. **Ladder.** The budget selector's candidates and sensitivities are measured once
   (:class:`~pipeline.factorize.budget.BudgetOptions`); its greedy allocation is walked down to each MAC fraction of
   ``factorize.search.levels``, giving one rank allocation per level (levels that give the same ranks merge).
2. **Speed.** Every level is decomposed and exported, and the dense model and all levels are timed interleaved in one
   loop on the target (ORT, 1 thread, batch 1). A level that is not faster than a milder one is dropped: fewer MACs
   that do not run faster only cost accuracy (narrow layers are bound by per-node overhead).
3. **Accuracy.** On the remaining levels (mildest to most aggressive) a bisection runs a short distillation probe
   (``factorize.search.probe_images`` training images, one pass) per visited level and keeps the most aggressive
   level whose probe validation accuracy is within ``factorize.search.probe_drop`` of the original's. At most
   ``ceil(log2(levels)) + 1`` probes run, so the search time is bounded.

The finetune stage then trains the chosen level; when its validation accuracy misses ``benchmark.max_drop`` it
falls back to the next milder level the search kept, and last to ``factorize.search.fallback_level`` (a mild level
built and timed but never probed), ``factorize.search.backoffs`` times at most.

This module knows nothing of finetuning or timing: the stage passes the probe and the timer in as callables.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from pipeline.config import BudgetConfig, FactorizeConfig
from pipeline.factorize.budget import BudgetOptions
from pipeline.factorize.plan import LayerReport, Plan
from pipeline.factorize.ranks import SELECTORS, ModelSelector
from pipeline.factorize.swap import count_macs_params, factorize_model, prepare_plans

Allocation = dict[str, "tuple[int, ...] | None"]


@dataclass
class Level:
    """One rung of the ladder: its MAC fraction, ranks, and what the search measured of it."""

    fraction: float
    allocation: Allocation
    macs: int = 0
    p50_ms: float | None = None
    speedup: float | None = None
    probe_val: float | None = None
    kept: bool = True          # on the speed frontier (faster than every milder level)
    why: str = ""

    def summary(self) -> dict[str, Any]:
        """The level's row in the search table (metrics and the report)."""
        return {"fraction": self.fraction, "macs": self.macs, "p50_ms": self.p50_ms, "speedup": self.speedup,
                "probe_val": self.probe_val, "kept": self.kept, "why": self.why}


@dataclass
class SearchResult:
    """The chosen level's factorized model and reports, the milder fallbacks, and the search table."""

    model: nn.Module
    layers: list[LayerReport]
    structure: dict[str, dict[str, Any]]
    chosen: int
    levels: list[Level]
    fallbacks: list[tuple[nn.Module, list[LayerReport], dict[str, dict[str, Any]]]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    fallback_levels: list[int] = field(default_factory=list)  # the fallbacks' indices in ``levels``, mildest last

    def summary(self) -> dict[str, Any]:
        """JSON-able summary: every level's row, the chosen index and the time each phase took."""
        return {"levels": [lv.summary() for lv in self.levels], "chosen": self.chosen,
                "chosen_fraction": self.levels[self.chosen].fraction,
                "fallback_fractions": [self.levels[i].fraction for i in self.fallback_levels],
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "probes": sum(lv.probe_val is not None for lv in self.levels)}


def budget_config(cfg: FactorizeConfig, fraction: float = 1.0) -> FactorizeConfig:
    """``cfg`` as the budget selector at a MAC ``fraction`` (the search plans and allocates through it)."""
    b = cfg.budget
    return dataclasses.replace(cfg, selector="budget",
                               budget=BudgetConfig(macs=fraction, target=b.target, eval_samples=b.eval_samples))


def ladder(model: nn.Module, cfg: FactorizeConfig, example_input: torch.Tensor,
           eval_fn: Callable[[nn.Module], float] | None, calib_images: torch.Tensor | None) -> list[Level]:
    """One allocation per MAC fraction of ``cfg.search.levels`` from one measurement of the budget options;
    fractions below what the eligible layers can reach give the lowest reachable allocation, duplicates merge."""
    bcfg = budget_config(cfg)
    src, plans, stats = prepare_plans(model, bcfg, example_input, calib_images)
    opts = BudgetOptions.measure(src, plans, bcfg, "macs", eval_fn, stats or None)
    levels: list[Level] = []
    fractions = set(float(f) for f in cfg.search.levels)
    if cfg.search.fallback_level > 0:
        fractions.add(float(cfg.search.fallback_level))
    for frac in sorted(fractions, reverse=True):
        alloc = opts.allocation(opts.levels(frac, "macs", strict=False))
        if levels and alloc == levels[-1].allocation:
            continue
        if all(r is None for r in alloc.values()):
            continue  # nothing factorized at this level: not a candidate
        levels.append(Level(frac, alloc))
    return levels


def _build(model: nn.Module, cfg: FactorizeConfig, example_input: torch.Tensor, calib: torch.Tensor | None,
           level: Level):
    """The level's factorized model, per-layer reports and structure (data-aware when ``cfg.objective=outputs``)."""
    return factorize_model(model, budget_config(cfg, level.fraction), example_input, calib_images=calib,
                           allocation=level.allocation)


def bisect_levels(n: int, accept: Callable[[int], bool]) -> int | None:
    """The largest index ``i`` in ``0..n-1`` with ``accept(i)``, assuming acceptance falls monotonically with ``i``
    (more compression, less accuracy); None when even index 0 fails. Calls ``accept`` ``O(log n)`` times."""
    if n == 0 or not accept(0):
        return None
    lo, hi = 0, n - 1  # invariant: accept(lo) holds; every index above hi fails
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if accept(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def search_ranks(model: nn.Module, cfg: FactorizeConfig, example_input: torch.Tensor, *,
                 eval_fn: Callable[[nn.Module], float] | None, calib_images: torch.Tensor | None,
                 time_models: Callable[[dict[str, nn.Module]], dict[str, float]],
                 probe: Callable[[nn.Module], float] | None, base_val: float | None,
                 log: Any = None) -> SearchResult:
    """Search the ranks of ``model`` (see the module docstring).

    Args:
        model: the dense trained model (not modified).
        cfg: the factorize config; ``cfg.search`` holds the levels, probe size and tolerance, and back-offs.
        example_input: one batch for the layer sizes and MAC counts.
        eval_fn: validation accuracy of a model on the budget selector's subset (sensitivities), or None.
        calib_images: calibration images for ``objective=outputs`` (else None).
        time_models: ``{name: model} -> {name: p50 ms}`` timed interleaved on the target; ``"dense"`` is the
            original.
        probe: a short distillation of a factorized model returning its validation accuracy; None (no labels to
            score a probe by) keeps the mildest level that measured faster.
        base_val: the original's validation accuracy (the probe's reference).
        log: a logger for one line per phase.

    Returns:
        The chosen level's model, reports and structure, up to ``cfg.search.backoffs`` milder fallbacks, and the
        search table.
    """
    s = cfg.search
    t0 = time.perf_counter()
    levels = ladder(model, cfg, example_input, eval_fn, calib_images)
    if not levels:
        # nothing can be factorized at any level (every layer too narrow or grouped): the plain plans, all dense
        fact, layers, structure = factorize_model(model, budget_config(cfg, 1.0), example_input,
                                                  calib_images=calib_images, allocation={})
        return SearchResult(fact, layers, structure, 0, [Level(1.0, {}, why="no layer can be factorized")],
                            seconds={"ladder": time.perf_counter() - t0})
    t1 = time.perf_counter()
    built = [_build(model, cfg, example_input, calib_images, lv) for lv in levels]
    for lv, (m, _, _) in zip(levels, built):
        lv.macs = count_macs_params(m, example_input)[0]
    t2 = time.perf_counter()
    ms = time_models({"dense": model, **{f"level{i}": b[0] for i, b in enumerate(built)}})
    best = ms["dense"]
    for i, lv in enumerate(levels):
        lv.p50_ms = round(ms[f"level{i}"], 4)
        lv.speedup = round(ms["dense"] / ms[f"level{i}"], 3)
        # kept only when measurably faster than the dense model and every milder kept level
        if ms[f"level{i}"] >= (1 - s.min_gain) * best:
            lv.kept, lv.why = False, "not measurably faster than a milder level"
        else:
            best = ms[f"level{i}"]
    frontier = [i for i, lv in enumerate(levels) if lv.kept]
    t3 = time.perf_counter()
    if not frontier:
        # no level runs faster on this target: the mildest is kept, and the gate will decide whether it ships
        frontier = [0]
        levels[0].kept, levels[0].why = True, "no level measured faster than the dense model; the mildest is kept"
    # the fallback level is never probed: it is the finetune stage's last resort, so the bisection runs over the
    # other kept levels (unless it is the only one)
    safety = [i for i in frontier if s.fallback_level > 0 and levels[i].fraction == float(s.fallback_level)]
    candidates = [i for i in frontier if i not in safety] or frontier
    if safety and safety[0] not in candidates:
        levels[safety[0]].why = "fallback level: trained only when the searched level misses max_drop"
    if probe is None or base_val is None:
        chosen_pos = 0
        levels[candidates[0]].why = "no labels for a probe: the mildest faster level"
    else:
        def accept(pos: int) -> bool:
            lv = levels[candidates[pos]]
            lv.probe_val = round(float(probe(built[candidates[pos]][0])), 5)
            ok = base_val - lv.probe_val <= s.probe_drop
            lv.why = (f"probe val {lv.probe_val:.4f} vs original {base_val:.4f}: "
                      + ("within" if ok else "beyond") + f" probe_drop {s.probe_drop}")
            if log is not None:
                log.info("factorize: search level %.3f of the MACs (%.2fx faster): %s", lv.fraction,
                         lv.speedup, lv.why)
            return ok
        pos = bisect_levels(len(candidates), accept)
        chosen_pos = 0 if pos is None else pos
    chosen = candidates[chosen_pos]
    # back-offs: the next milder searched levels first, the fallback level last (it takes the last back-off)
    milder = list(reversed(candidates[:chosen_pos]))
    tail = [i for i in safety if i != chosen]
    n_back = max(0, s.backoffs)
    back = (milder[:max(0, n_back - len(tail))] + tail)[:n_back] if n_back else []
    t4 = time.perf_counter()
    fact, layers, structure = built[chosen]
    return SearchResult(fact, layers, structure, chosen, levels, [built[i] for i in back],
                        seconds={"ladder": t1 - t0, "decompose": t2 - t1, "latency": t3 - t2, "probes": t4 - t3,
                                 "total": t4 - t0}, fallback_levels=back)


class SearchSelector(ModelSelector):
    """``selector=search`` outside the factorize stage (no probe, no timing): the budget allocation at the
    mildest level of ``factorize.search.levels``. The stage runs the whole search (:func:`search_ranks`)."""

    per_layer = "fixed"

    def allocate(self, model: nn.Module, plans: list[Plan], cfg: FactorizeConfig, example_input: torch.Tensor,
                 eval_fn: Callable[[nn.Module], float] | None, stats: dict[str, Any] | None = None) -> None:
        """See the class docstring."""
        frac = max(float(f) for f in cfg.search.levels)
        bcfg = budget_config(cfg, frac)
        opts = BudgetOptions.measure(model, plans, bcfg, "macs", eval_fn, stats)
        opts.apply(opts.levels(frac, "macs", strict=False), "macs")


SELECTORS.add("search", SearchSelector())
