"""Glue of the output objective (``factorize.objective=outputs``): which statistics each planned layer needs, the
calibration pass that collects them, and per-layer output-error curves for rank selection.

The maths is in the formats (``decompose(..., stats=)``, ``data_spectra``, ``output_error``) and
:mod:`pipeline.factorize.formats.stats`; the collectors in :mod:`pipeline.factorize.activations`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import FactorizeConfig
from pipeline.errors import ConfigError
from pipeline.factorize.activations import collect_stats
from pipeline.factorize.formats import Format, MatrixFormatType
from pipeline.factorize.formats.stats import LayerStats
from pipeline.factorize.plan import Plan

OBJECTIVES = ("weights", "outputs")


def check_config(cfg: FactorizeConfig, calib_images: Any) -> bool:
    """Whether the output objective is on; validates its settings.

    Raises:
        ConfigError: unknown objective, out-of-range calibration settings, or objective=outputs without images.
    """
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"factorize.objective={cfg.objective!r} is unknown; use one of {list(OBJECTIVES)}")
    if cfg.calib_images < 1 or cfg.calib_positions < 1:
        raise ConfigError("factorize.calib_images and factorize.calib_positions must be >= 1 "
                          f"(got {cfg.calib_images}, {cfg.calib_positions})")
    if not 0 <= cfg.whiten_eps < 1:
        raise ConfigError(f"factorize.whiten_eps={cfg.whiten_eps} must be in [0, 1)")
    if cfg.objective != "outputs":
        return False
    if calib_images is None or len(calib_images) == 0:
        raise ConfigError("factorize.objective=outputs needs calibration images (the factorize stage passes training "
                          "images); set factorize.objective=weights to factorize from the weights alone")
    return True


def needed_kinds(plans: list[Plan]) -> dict[str, tuple[str, ...]]:
    """``{layer: statistics}`` for every plan that has a format or candidate formats (the union of their needs)."""
    out: dict[str, tuple[str, ...]] = {}
    for p in plans:
        fmts: list[Format] = [f for f, _, _ in p.candidates] + ([p.fmt] if p.fmt is not None else [])
        kinds = tuple(dict.fromkeys(k for f in fmts for k in f.stat_kinds))
        if kinds:
            out[p.name] = kinds
    return out


def model_stats(model: nn.Module, plans: list[Plan], cfg: FactorizeConfig,
                images: torch.Tensor) -> dict[str, LayerStats]:
    """One calibration pass over ``model`` for every planned layer (``cfg.calib_images``, ``cfg.calib_positions``)."""
    return collect_stats(model, needed_kinds(plans), images, max_images=cfg.calib_images,
                         positions=cfg.calib_positions, eps=cfg.whiten_eps)


def layer_stats(model: nn.Module, plan: Plan, cfg: FactorizeConfig, images: torch.Tensor) -> LayerStats:
    """One layer's statistics on ``model`` as it is now (the sequential objective: predecessors already factorized);
    each forward pass stops right after the layer."""
    return collect_stats(model, {plan.name: plan.fmt.stat_kinds}, images, max_images=cfg.calib_images,
                         positions=cfg.calib_positions, eps=cfg.whiten_eps, stop_early=True)[plan.name]


class OutputErrors:
    """Relative output error of a layer at candidate ranks, from the whitened spectrum where it is exact (matrix
    formats: the tail energy of the whitened singular values), else from the decomposition itself."""

    def __init__(self, fmt: Format, weight: torch.Tensor, stats: LayerStats, **opts: Any) -> None:
        self.fmt, self.weight, self.stats, self.opts = fmt, weight.detach(), stats, opts
        self._curve: np.ndarray | None = None

    def curve(self) -> np.ndarray:
        """Relative output error at rank r = 0..max (matrix formats)."""
        if self._curve is None:
            s = self.fmt.data_spectra(self.weight, self.stats)[0] ** 2
            tail = np.concatenate([np.cumsum(s[::-1])[::-1], [0.0]])
            self._curve = np.sqrt(np.clip(tail / max(float(s.sum()), 1e-300), 0.0, None))
        return self._curve

    def at(self, ranks: tuple[int, ...], factors: dict[str, torch.Tensor] | None = None) -> float:
        """Relative output error at ``ranks`` (``factors``: the decomposition, when already computed)."""
        if isinstance(self.fmt, MatrixFormatType) and factors is None:
            c = self.curve()
            return float(c[min(int(ranks[0]), len(c) - 1)])
        if factors is None:
            factors = self.fmt.decompose(self.weight, ranks, stats=self.stats, **self.opts)
        return self.fmt.output_error(self.weight, self.fmt.reconstruct(factors), self.stats)
