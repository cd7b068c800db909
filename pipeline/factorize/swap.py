"""Swap dense conv/linear layers for factorized ones: decide per layer (format, ranks, or dense with a reason),
decompose, replace, and report. Never mutates the input model.

The plan and report types live in :mod:`pipeline.factorize.plan` (re-exported here); a model-scope selector
(``budget``) is looked up in the selector registry, so this module and the budget allocator do not import each other.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable

import torch
from torch import nn

from pipeline.config import FactorizeConfig
from pipeline.errors import ConfigError, NumericalError
from pipeline.factorize.formats import CONV_FORMATS, FORMATS, Format
from pipeline.factorize.data_aware import check_config, layer_stats, model_stats
from pipeline.factorize.formats.base import conv_check, dense_macs, dense_params
from pipeline.factorize.formats.stats import LayerStats
from pipeline.factorize.latency import measure_variants
from pipeline.factorize.plan import LayerReport, Plan, pointwise_format, set_module, target_layers
from pipeline.factorize.ranks import SELECTORS, model_selector, select_ranks
from pipeline.torch_eval import eval_mode

__all__ = ["BREAK_EVEN_MARGIN", "LayerReport", "NODE_OVERHEAD_MACS", "Plan", "apply_structure", "break_even",
           "count_macs_params", "factorize_model", "factorize_with_structure", "plan_layers", "probe_sizes",
           "set_module", "target_layers"]

# Per-node cost in MAC-equivalents used by method=auto to weigh node count against MACs: on this CPU class an
# ORT node costs a few microseconds of dispatch, which is what makes narrow factorized layers slower (measured
# with pipeline.factorize.latency).
NODE_OVERHEAD_MACS = 200_000
# break_even keeps a factorized layer only if it measures at least this much faster than the dense one.
BREAK_EVEN_MARGIN = 0.05


def _hooked_forward(model: nn.Module, example_input: torch.Tensor,
                    hook: Callable[[str, tuple, torch.Tensor], None]) -> None:
    """One no-grad eval forward with ``hook(layer_name, inputs, output)`` on every target layer; flags restored."""
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: hook(name, inp, out))
               for name, m in target_layers(model)]
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()


def probe_sizes(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """``{name: (input_hw, output_hw)}`` of every conv (``(1, 1)`` sizes for linear layers) from one forward pass."""
    sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    def hook(name: str, inp: tuple, out: torch.Tensor) -> None:
        if out.dim() == 4:
            sizes[name] = (tuple(inp[0].shape[-2:]), tuple(out.shape[-2:]))
        else:
            sizes[name] = ((1, 1), (1, 1))

    _hooked_forward(model, example_input, hook)
    return sizes


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """Conv/linear multiply-accumulates per sample (forward hooks) and the number of parameters."""
    total = [0]
    batch = example_input.shape[0]
    layers = dict(target_layers(model))

    def hook(name: str, inp: tuple, out: torch.Tensor) -> None:
        mod = layers[name]
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total[0] += out.numel() // batch * (mod.in_channels // mod.groups) * kh * kw
        else:
            total[0] += out.numel() // batch * mod.in_features

    _hooked_forward(model, example_input, hook)
    return int(total[0]), int(sum(p.numel() for p in model.parameters()))


def _check_finite(name: str, layer: nn.Module) -> None:
    for pname, p in layer.named_parameters(recurse=False):
        if not torch.isfinite(p).all():
            raise NumericalError(f"layer {name!r}: {pname} contains NaN/Inf; fix or retrain the model before factorizing")


def _ranks_for(fmt: Format, layer: nn.Module, cfg: FactorizeConfig, selector: str,
               stats: LayerStats | None = None) -> tuple[tuple[int, ...], str]:
    mats = fmt.matrices(layer.weight.detach())
    # With calibration statistics the selectors see the whitened spectra of the output variation (centred moments):
    # energy then keeps that fraction of the variance of the layer's outputs.
    spectra = fmt.data_spectra(layer.weight.detach(), stats.centred()) if stats is not None else fmt.spectra(layer)
    return select_ranks(spectra, [tuple(m.shape) for m in mats], fmt.max_ranks(layer), cfg, selector)


def _modelled_cost(macs: int, nodes: int) -> int:
    return macs + NODE_OVERHEAD_MACS * nodes


def plan_layers(model: nn.Module, cfg: FactorizeConfig,
                sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]],
                stats: dict[str, LayerStats] | None = None) -> list[Plan]:
    """Decide format and ranks (or dense + reason) for every conv/linear layer (``stats``: calibration statistics
    per layer; the rank selectors then use the whitened spectra)."""
    plans: list[Plan] = []
    layers = target_layers(model)
    convs = [n for n, m in layers if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    scope = model_selector(cfg.selector)
    selector = scope.per_layer if scope is not None else cfg.selector
    for name, layer in layers:
        _check_finite(name, layer)
        in_hw, out_hw = sizes.get(name, ((1, 1), (1, 1)))
        p = Plan(name, layer, out_hw, in_hw)
        plans.append(p)
        if name not in sizes:
            p.reason = "not reached by the forward pass"
            continue
        is_conv = isinstance(layer, nn.Conv2d)
        if is_conv and layer.groups > 1:
            # Depthwise/grouped convs first, so the report always says why low rank cannot touch them.
            p.reason = conv_check(layer) or f"grouped conv (groups={layer.groups}): not factorized"
            continue
        method = cfg.method if is_conv else cfg.linear_method
        if method == "none":
            p.reason = "linear layers kept dense (factorize.linear_method=none)"
            continue
        if is_conv and cfg.skip_first and convs and name == convs[0]:
            p.reason = "first conv sees raw pixels (few input channels): kept dense (factorize.skip_first)"
            continue
        if not is_conv and cfg.skip_last_linear and linears and name == linears[-1]:
            p.reason = "classifier kept dense (factorize.skip_last_linear)"
            continue
        if is_conv:
            n, c = layer.out_channels, layer.in_channels
            if min(n, c) < cfg.min_channels:
                p.reason = f"narrow layer ({c}->{n} channels < min_channels {cfg.min_channels}): overhead-bound, kept dense"
                continue
        kernel_note = ""
        if method == "auto":
            candidates = [f for f in CONV_FORMATS if f != "cp"] if is_conv else ["linear_svd"]
        else:
            # A 1x1 conv under a format without a 1x1 form gets the channel SVD (the graph path's rule too).
            fname, kernel_note = pointwise_format(method, tuple(layer.kernel_size)) if is_conv else (method, "")
            candidates = [fname]
        macs0 = dense_macs(layer, p.out_hw)
        best: tuple[int, Format, tuple[int, ...], str] | None = None
        reasons = []
        for fname in candidates:
            fmt = FORMATS.get(fname)
            if not isinstance(layer, fmt.layer_types):
                reasons.append(f"{fname} does not apply to {type(layer).__name__}")
                continue
            why = fmt.check(layer)
            if why:
                reasons.append(why)
                continue
            ranks, note = _ranks_for(fmt, layer, cfg, selector, (stats or {}).get(name))
            note = "; ".join(x for x in (kernel_note, note) if x)
            macs1 = fmt.macs(layer, ranks, p.out_hw)
            if macs1 > (1 - cfg.min_mac_saving) * macs0:
                reasons.append("; ".join(x for x in (kernel_note, f"{fname} at ranks {list(ranks)} would not save "
                                                                   f"MACs ({macs1:,} vs {macs0:,})") if x))
                continue
            nodes = len(fmt.build(layer, ranks)) if method == "auto" else 1
            cost = _modelled_cost(macs1, nodes)
            p.candidates.append((fmt, ranks, note))
            if best is None or cost < best[0]:
                best = (cost, fmt, ranks, note)
        if best is None:
            p.reason = "; ".join(dict.fromkeys(reasons)) or "no format applies"
            continue
        # With break_even the measurement decides instead of the model (break_even() sees all candidates).
        if method == "auto" and best[0] >= _modelled_cost(macs0, 1) and not cfg.break_even:
            p.reason = f"auto: dense is cheaper than {best[1].name} at ranks {list(best[2])} once per-node overhead is counted"
            continue
        _, p.fmt, p.ranks, p.note = best
    return plans


def break_even(plans: list[Plan], cfg: FactorizeConfig) -> None:
    """Keep a layer dense unless its factorized form measures faster on ``cfg.budget.target`` (ORT, 1 thread).

    With ``method=auto`` (and a per-layer selector) every admissible format is measured and the fastest is kept,
    replacing the MAC + node-overhead model by measurement. "Measurably" = at least :data:`BREAK_EVEN_MARGIN`
    faster, since same-run timing ratios move by 3-5 % on a shared machine.
    """
    whole_model = model_selector(cfg.selector) is not None
    for p in plans:
        if p.fmt is None:
            continue
        # A model-scope selector fixed the ranks of p.fmt; otherwise every admissible candidate competes.
        cands = p.candidates if not whole_model and p.candidates else [(p.fmt, p.ranks, p.note)]
        ms = measure_variants(p.layer, p.in_hw, [(None, None)] + [(f.name, r) for f, r, _ in cands],
                              target=cfg.budget.target)
        dense_ms, fact_ms = ms[0], ms[1:]
        i = min(range(len(cands)), key=fact_ms.__getitem__)
        fmt, ranks, note = cands[i]
        measured = f"measured {fact_ms[i]:.3f} ms vs dense {dense_ms:.3f} ms ({cfg.budget.target}, ORT, 1 thread)"
        if fact_ms[i] > (1 - BREAK_EVEN_MARGIN) * dense_ms:
            p.reason = f"break_even: {fmt.name} at ranks {list(ranks)} is not measurably faster: {measured}"
            p.fmt, p.ranks = None, None
        else:
            p.fmt, p.ranks = fmt, ranks
            p.note = "; ".join(x for x in (note, f"break_even: {measured}") if x)


def _decompose_into(model: nn.Module, plan: Plan, cfg: FactorizeConfig | None,
                    stats: LayerStats | None = None) -> tuple[float, float | None]:
    """Replace the plan's layer in ``model`` by its factorized module; ``(weight error, output error or None)``."""
    fmt, layer = plan.fmt, plan.layer
    opts = {"hooi_iters": cfg.hooi_iters, "cp_max_iters": cfg.cp_max_iters, "cp_time_limit_s": cfg.cp_time_limit_s} if cfg else {}
    factors = fmt.decompose(layer.weight.detach(), plan.ranks, stats=stats, **opts)
    w = layer.weight.detach().to(torch.float64)
    approx = fmt.reconstruct(factors).reshape(w.shape)
    err = float((w - approx).norm() / w.norm().clamp_min(1e-30))
    if not math.isfinite(err):
        raise NumericalError(f"layer {plan.name!r}: {fmt.name} decomposition produced NaN/Inf")
    out_err = fmt.output_error(layer.weight.detach(), approx, stats) if stats is not None else None
    set_module(model, plan.name, fmt.to_module(layer, factors))
    return err, out_err


def prepare_plans(model: nn.Module, cfg: FactorizeConfig, example_input: torch.Tensor,
                  calib_images: torch.Tensor | None = None
                  ) -> tuple[nn.Module, list[Plan], dict[str, LayerStats]]:
    """An eval-mode copy of ``model``, the per-layer plans of ``cfg`` (before any whole-model selector) and, with
    ``cfg.objective=outputs``, each planned layer's calibration statistics."""
    data_aware = check_config(cfg, calib_images)
    src = copy.deepcopy(model).eval()
    sizes = probe_sizes(src, example_input)
    if not data_aware:
        return src, plan_layers(src, cfg, sizes), {}
    # One calibration pass for every layer a format applies to (also those the weight spectra left without a
    # MAC saving: their whitened ranks may be lower), then re-plan on the whitened spectra.
    every = plan_layers(src, dataclasses.replace(cfg, min_mac_saving=-0.99), sizes)
    stats = model_stats(src, every, cfg, calib_images)
    return src, plan_layers(src, cfg, sizes, stats), stats


def apply_allocation(plans: list[Plan], allocation: dict[str, tuple[int, ...] | None]) -> None:
    """Set the named plans' ranks to ``allocation`` (None: dense, with the reason)."""
    for p in plans:
        if p.fmt is None or p.name not in allocation:
            continue
        ranks = allocation[p.name]
        if ranks is None:
            p.reason = "search: kept dense (the searched MAC level was met without it)"
            p.fmt, p.ranks = None, None
        else:
            p.ranks = tuple(ranks)
            p.note = f"search: ranks {list(p.ranks)}"


def factorize_model(
    model: nn.Module,
    cfg: FactorizeConfig,
    example_input: torch.Tensor,
    eval_fn: Callable[[nn.Module], float] | None = None,
    calib_images: torch.Tensor | None = None,
    allocation: dict[str, tuple[int, ...] | None] | None = None,
) -> tuple[nn.Module, list[LayerReport], dict[str, dict[str, Any]]]:
    """Factorize ``model`` as ``cfg`` says.

    Per layer: format (``cfg.method``, or ``auto``: lowest modelled cost = MACs + per-node overhead, or lowest
    measured latency with ``cfg.break_even``), ranks from ``cfg.selector`` aligned to ``cfg.align``, or dense with
    the reason (first conv, narrow layer, grouped/depthwise, no MAC saving, not measurably faster, budget met).

    Args:
        model: the dense model (not modified).
        cfg: the factorize config (method, selector, alignment, rules for keeping layers dense).
        example_input: one batch used to find each layer's output size.
        eval_fn: validation accuracy of a model; the ``budget`` selector uses it to measure sensitivity.
        calib_images: calibration inputs (N, C, H, W), needed by ``cfg.objective=outputs``: their statistics make
            every decomposition minimise the layer's output error, the selectors use the whitened spectra, and the
            budget selector's cost is the measured output error (beside the validation drop when ``eval_fn``).
            With ``cfg.sequential`` each layer's statistics are collected after its predecessors are factorized.
        allocation: ranks chosen beforehand (the rank search's ``{layer: ranks or None for dense}``) instead of the
            selector's; layers it does not name keep the plan's decision.

    Returns:
        ``(new_model, per-layer reports, structure)`` where structure maps layer name -> {"format", "ranks"}.

    Raises:
        ConfigError: unknown format/selector names, or an unreachable/ill-formed budget.
        NumericalError: NaN/Inf in a layer's weights (the message names the layer).
    """
    if cfg.method != "auto":
        FORMATS.get(cfg.method)
    if cfg.linear_method not in ("none",):
        FORMATS.get(cfg.linear_method)
    SELECTORS.get(cfg.selector)
    data_aware = check_config(cfg, calib_images)
    src, plans, stats = prepare_plans(model, cfg, example_input, calib_images)
    scope = model_selector(cfg.selector)
    if allocation is not None:
        apply_allocation(plans, allocation)
    elif scope is not None:
        scope.allocate(src, plans, cfg, example_input, eval_fn, stats=stats or None)
    if cfg.break_even:
        break_even(plans, cfg)
    new = copy.deepcopy(src)
    reports: list[LayerReport] = []
    structure: dict[str, dict[str, Any]] = {}
    for p in plans:
        layer = p.layer
        is_conv = isinstance(layer, nn.Conv2d)
        macs0, params0 = dense_macs(layer, p.out_hw), dense_params(layer)
        row = LayerReport(
            name=p.name, kind=type(layer).__name__, shape=list(layer.weight.shape),
            stride=list(layer.stride) if is_conv else [1, 1], format=None, ranks=None,
            macs_before=macs0, macs_after=macs0, params_before=params0, params_after=params0,
            rel_error=None, status="dense", reason=p.reason,
        )
        if p.fmt is not None:
            st = None
            if data_aware:
                # Sequential: statistics of this layer's inputs in the partly factorized model.
                st = layer_stats(new, p, cfg, calib_images) if cfg.sequential else stats.get(p.name)
            row.rel_error, out_err = _decompose_into(new, p, cfg, st)
            note = p.note if out_err is None else "; ".join(
                x for x in (p.note, f"output error {out_err:.4f} on calibration data") if x)
            row.format, row.ranks, row.status, row.reason = p.fmt.name, list(p.ranks), "factorized", note
            row.macs_after = p.fmt.macs(layer, p.ranks, p.out_hw)
            row.params_after = p.fmt.params(layer, p.ranks)
            structure[p.name] = {"format": p.fmt.name, "ranks": list(p.ranks)}
        reports.append(row)
    return new, reports, structure


def _structure_items(model: nn.Module, structure: dict[str, dict[str, Any]]):
    for name, entry in structure.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"structure names layer {name!r}, which the model does not have") from None
        fmt = FORMATS.get(entry["format"])
        ranks = tuple(int(r) for r in entry["ranks"])
        maxr = fmt.max_ranks(layer)
        if len(ranks) != len(maxr) or any(r < 1 or r > m for r, m in zip(ranks, maxr)):
            raise ConfigError(f"layer {name!r}: ranks {list(ranks)} invalid for {fmt.name} (allowed 1..{list(maxr)})")
        yield name, layer, fmt, ranks


def apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> nn.Module:
    """A copy of ``model`` with the structure's layers replaced by uninitialised factorized modules (for loading weights)."""
    new = copy.deepcopy(model)
    for name, layer, fmt, ranks in list(_structure_items(new, structure)):
        set_module(new, name, fmt.build(layer, ranks).to(dtype=layer.weight.dtype, device=layer.weight.device))
    return new


def factorize_with_structure(model: nn.Module, structure: dict[str, dict[str, Any]],
                             stats: dict[str, LayerStats] | None = None, **opts: Any) -> nn.Module:
    """A copy of ``model`` decomposed at exactly the structure's formats and ranks (data-aware for the layers
    ``stats`` has)."""
    new = copy.deepcopy(model)
    for name, layer, fmt, ranks in list(_structure_items(new, structure)):
        _check_finite(name, layer)
        factors = fmt.decompose(layer.weight.detach(), ranks, stats=(stats or {}).get(name), **opts)
        set_module(new, name, fmt.to_module(layer, factors))
    return new
