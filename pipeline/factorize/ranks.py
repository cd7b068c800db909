"""Rank selection: per-layer selectors (energy, effective rank, VBMF, fixed ratio), the model-scope selector
interface, and hardware alignment.

Every selector is registered in :data:`SELECTORS`. A per-layer selector maps one layer's :class:`RankContext` to
ranks; a :class:`ModelSelector` (the ``budget`` selector of :mod:`pipeline.factorize.budget`, which registers
itself) chooses the ranks of the whole model at once against a model-level target.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

from pipeline.config import FactorizeConfig
from pipeline.registry import Registry

if TYPE_CHECKING:  # annotations only: the plan types import the formats, which rank selection does not need
    from torch import nn

    from pipeline.factorize.plan import Plan


@dataclass(frozen=True)
class RankContext:
    """What a selector sees for one layer: the spectrum and shape of each matricisation, and the rank limits."""

    spectra: list[np.ndarray]
    shapes: list[tuple[int, int]]
    max_ranks: tuple[int, ...]
    cfg: FactorizeConfig


LayerSelector = Callable[[RankContext], "tuple[int, ...]"]


class ModelSelector(ABC):
    """A selector that chooses the ranks of the whole model at once (against a MAC/params/latency target).

    The factorizer first plans every layer with the per-layer selector :attr:`per_layer` (which also gives the
    candidate ranks when the selector is called on one layer), then hands all plans to :meth:`allocate`.
    """

    #: the per-layer selector that plans each layer before the whole-model allocation
    per_layer: str = "fixed"

    def __call__(self, ctx: RankContext) -> tuple[int, ...]:
        """One layer's starting ranks (those of :attr:`per_layer`)."""
        return SELECTORS.get(self.per_layer)(ctx)

    @abstractmethod
    def allocate(self, model: "nn.Module", plans: "list[Plan]", cfg: FactorizeConfig, example_input: Any,
                 eval_fn: Callable[["nn.Module"], float] | None, stats: dict[str, Any] | None = None) -> None:
        """Set ``fmt``/``ranks`` (or dense with a reason) of the eligible plans so the model meets the target.

        ``stats``: calibration statistics per layer (objective=outputs): decompose data-aware and measure the
        output error."""


SELECTORS: Registry[Union[LayerSelector, ModelSelector]] = Registry("selector")


def model_selector(name: str) -> ModelSelector | None:
    """The model-scope selector registered as ``name``, or None when ``name`` is a per-layer selector."""
    sel = SELECTORS.get(name)
    return sel if isinstance(sel, ModelSelector) else None


def select_ranks(spectra: list[np.ndarray], shapes: list[tuple[int, int]], max_ranks: tuple[int, ...],
                 cfg: FactorizeConfig, selector: str) -> tuple[tuple[int, ...], str]:
    """One layer's ranks from per-layer ``selector``, aligned to ``cfg.align`` and clamped; note when clamped.

    Both factorizers (torch modules and ONNX graphs) choose ranks through this function.
    """
    ctx = RankContext(spectra=spectra, shapes=shapes, max_ranks=max_ranks, cfg=cfg)
    raw = SELECTORS.get(selector)(ctx)
    ranks = tuple(align_rank(r, cfg.align, m) for r, m in zip(raw, ctx.max_ranks))
    note = ""
    if any(r > m for r, m in zip(raw, ctx.max_ranks)):
        note = f"ranks {list(raw)} clamped to the layer's maximum {list(ctx.max_ranks)}"
    return ranks, note


def align_rank(r: int, align: int, max_rank: int) -> int:
    """Round ``r`` up to a multiple of ``align`` (ORT's NCHWc blocks: 8 on AVX2, 16 on AVX-512), clamp to [1, max_rank]."""
    r = max(1, int(r))
    if align > 1:
        r = int(math.ceil(r / align) * align)
    return max(1, min(r, int(max_rank)))


def energy_rank(s: np.ndarray, energy: float) -> int:
    """Smallest K with sum_{i<=K} s_i^2 >= energy * sum_i s_i^2."""
    e = np.asarray(s, dtype=np.float64) ** 2
    total = e.sum()
    if total <= 0:
        return 1
    k = int(np.searchsorted(np.cumsum(e) / total, energy - 1e-12) + 1)
    return min(max(k, 1), len(e))


def effective_rank(s: np.ndarray) -> float:
    """Roy & Vetterli (2007): exp of the entropy of p_i = s_i / ||s||_1; 1 <= erank <= rank."""
    s = np.abs(np.asarray(s, dtype=np.float64))
    total = s.sum()
    if total <= 0:
        return 1.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt(np.maximum((x - (1 + alpha)) ** 2 - 4 * alpha, 0.0)))


def _evb_free_energy(sigma2: float, L: int, M: int, s: np.ndarray, residual: float, xubar: float) -> float:
    H = len(s)
    alpha = L / M
    x = s**2 / (M * sigma2)
    z1 = x[x > xubar]
    z2 = x[x <= xubar]
    tau_z1 = _tau(z1, alpha)
    term1 = np.sum(z2 - np.log(z2))
    term2 = np.sum(z1 - tau_z1)
    term3 = np.sum(np.log(np.divide(tau_z1 + 1, z1)))
    term4 = alpha * np.sum(np.log(tau_z1 / alpha + 1))
    return float(term1 + term2 + term3 + term4 + residual / (M * sigma2) + (L - H) * np.log(sigma2))


def vbmf_rank(s: np.ndarray, shape: tuple[int, int] | None = None) -> int:
    """Rank kept by analytic empirical VBMF (Nakajima et al. 2013), noise variance estimated by free-energy minimisation.

    As Kim et al. (2016) use it for Tucker-2: applied to each mode unfolding of the kernel.

    Args:
        s: singular values of the L x M matrix (descending), or the matrix itself.
        shape: the matrix shape (taken from ``s`` when a matrix is given).
    """
    from scipy.optimize import minimize_scalar

    arr = np.asarray(s, dtype=np.float64)
    if arr.ndim == 2:
        shape = shape or arr.shape
        arr = np.linalg.svd(arr, compute_uv=False)
    if shape is None:
        raise ValueError("vbmf_rank: give the matrix shape (L, M) together with its singular values")
    L, M = sorted(int(v) for v in shape)
    s = np.sort(np.abs(arr))[::-1][:L]
    s = s[s > 1e-300]
    H = len(s)
    if H < 2:
        return 1
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    residual = 0.0  # the full spectrum is given
    eh_ub = int(min(math.ceil(L / (1 + alpha)) - 1, H - 1))
    upper = (np.sum(s**2) + residual) / (L * M)
    tail = s[eh_ub:] if eh_ub < H else s[-1:]
    lower = max(s[min(eh_ub, H - 1)] ** 2 / (M * xubar), np.mean(tail**2) / M)
    if not upper > lower:
        lower, upper = upper * 1e-3, upper
    res = minimize_scalar(_evb_free_energy, args=(L, M, s, residual, xubar), bounds=(lower, upper), method="bounded")
    sigma2 = float(res.x)
    threshold = math.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return max(1, int(np.sum(s > threshold)))


@SELECTORS.register("energy")
def _energy(ctx: RankContext) -> tuple[int, ...]:
    return tuple(energy_rank(s, ctx.cfg.energy) for s in ctx.spectra)


@SELECTORS.register("erank")
def _erank(ctx: RankContext) -> tuple[int, ...]:
    return tuple(int(math.ceil(effective_rank(s) * ctx.cfg.erank_factor)) for s in ctx.spectra)


@SELECTORS.register("vbmf")
def _vbmf(ctx: RankContext) -> tuple[int, ...]:
    return tuple(vbmf_rank(s, shp) for s, shp in zip(ctx.spectra, ctx.shapes))


@SELECTORS.register("fixed")
def _fixed(ctx: RankContext) -> tuple[int, ...]:
    return tuple(int(math.ceil(ctx.cfg.ratio * m)) for m in ctx.max_ranks)

