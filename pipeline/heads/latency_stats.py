"""Honest latency ratios: the p50 ratio of two interleaved sample sets with a bootstrap confidence interval, and how
many samples a ratio of a wanted precision needs.

Why a bootstrap of the ratio of medians: latency samples are skewed (a floor plus a tail of preemptions), so a normal
interval on means misleads; the median is what the report calls p50, and resampling each variant's samples and
taking the ratio of the resampled medians gives the ratio's spread without assuming a shape. Samples taken in chunks
of consecutive runs (see ``benchmarks.latency.time_interleaved``) are correlated within a chunk, so ``block`` resamples
whole runs of ``block`` consecutive samples (a moving-block bootstrap), which keeps that correlation in the spread.

The half-width of such an interval shrinks as ``1 / sqrt(n)``; :func:`samples_needed` scales the current count by
that law to the count at which the interval's relative half-width meets a target (e.g. 5%, well inside the 10%
rerun tolerance a headline ratio must meet).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from pipeline.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RatioCI:
    """``ratio = p50(base) / p50(variant)`` (above 1: the variant is faster) and its confidence interval."""

    ratio: float
    lo: float
    hi: float
    confidence: float
    n_base: int
    n_variant: int

    @property
    def rel_halfwidth(self) -> float:
        """Half the interval's width relative to the ratio (0.05: +-5%)."""
        return (self.hi - self.lo) / (2.0 * self.ratio) if self.ratio > 0 else float("inf")

    @property
    def verdict(self) -> str:
        """``faster`` when the whole interval is above 1, ``slower`` when it is below 1, else ``same``."""
        return "faster" if self.lo > 1.0 else "slower" if self.hi < 1.0 else "same"

    def text(self) -> str:
        """E.g. ``1.29x (95% CI 1.22-1.36, 500/500 samples)``."""
        return (f"{self.ratio:.2f}x ({self.confidence:.0%} CI {self.lo:.2f}-{self.hi:.2f}, "
                f"{self.n_base}/{self.n_variant} samples)")

    def as_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "rel_halfwidth": self.rel_halfwidth, "verdict": self.verdict}


def _boot_medians(x: np.ndarray, n_boot: int, block: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    b = max(1, min(int(block), n))
    k = math.ceil(n / b)
    starts = rng.integers(0, n - b + 1, size=(n_boot, k))
    idx = (starts[:, :, None] + np.arange(b)[None, None, :]).reshape(n_boot, -1)[:, :n]
    return np.median(x[idx], axis=1)


def median_ratio_ci(base_ms: Sequence[float], variant_ms: Sequence[float], confidence: float = 0.95,
                    n_boot: int = 2000, seed: int = 0, block: int = 1) -> RatioCI:
    """The p50 ratio ``median(base) / median(variant)`` and its percentile-bootstrap confidence interval.

    Args:
        base_ms: the reference's samples (e.g. the original model's), any time unit.
        variant_ms: the variant's samples, taken interleaved with the reference's.
        confidence: the interval's coverage.
        n_boot: bootstrap resamples.
        seed: the resampling's seed (the same samples always give the same interval).
        block: consecutive samples resampled together (the timing loop's chunk size).

    Raises:
        ConfigError: fewer than 2 samples on a side, non-positive samples, or a confidence outside (0, 1).
    """
    a, b = np.asarray(base_ms, dtype=np.float64), np.asarray(variant_ms, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ConfigError(f"latency ratio: need at least 2 samples per variant (got {len(a)} and {len(b)}); raise "
                          "benchmark.samples")
    if (a <= 0).any() or (b <= 0).any() or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("latency ratio: samples must be positive finite times")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"latency ratio: confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    ratios = _boot_medians(a, n_boot, block, rng) / _boot_medians(b, n_boot, block, rng)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ratios, [tail, 1.0 - tail])
    return RatioCI(float(np.median(a) / np.median(b)), float(lo), float(hi), float(confidence), len(a), len(b))


def samples_needed(base_ms: Sequence[float], variant_ms: Sequence[float], rel_halfwidth: float = 0.05,
                   confidence: float = 0.95, n_boot: int = 2000, seed: int = 0, block: int = 1) -> int:
    """Samples per variant at which the p50 ratio's interval is about ``+-rel_halfwidth`` of the ratio.

    Extrapolated from the current samples by the ``1 / sqrt(n)`` law; less than the current count when it is
    already precise enough (never below 2).
    """
    if rel_halfwidth <= 0:
        raise ConfigError(f"latency ratio: rel_halfwidth must be > 0, got {rel_halfwidth}")
    ci = median_ratio_ci(base_ms, variant_ms, confidence, n_boot, seed, block)
    n = max(ci.n_base, ci.n_variant)
    return max(2, math.ceil(n * (ci.rel_halfwidth / rel_halfwidth) ** 2))
