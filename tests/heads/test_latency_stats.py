"""The p50 ratio's bootstrap interval and the sample count for a wanted precision, on synthetic latency samples."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.heads import median_ratio_ci, samples_needed


def _samples(median_ms: float, n: int, seed: int, spread: float = 0.1) -> np.ndarray:
    """Log-normal around ``median_ms`` (the median of a log-normal is exp(mu)) plus a sparse tail of stalls."""
    rng = np.random.default_rng(seed)
    x = median_ms * np.exp(rng.normal(0.0, spread, n))
    stalls = rng.random(n) < 0.05
    x[stalls] *= 3.0
    return x


def test_ratio_of_medians_and_interval_cover_the_true_ratio() -> None:
    base, fast = _samples(10.0, 400, 1), _samples(5.0, 400, 2)     # true p50 ratio 2
    ci = median_ratio_ci(base, fast)
    assert ci.ratio == pytest.approx(np.median(base) / np.median(fast))
    assert ci.lo < 2.0 < ci.hi and ci.lo < ci.ratio < ci.hi
    assert ci.verdict == "faster" and (ci.n_base, ci.n_variant) == (400, 400)
    assert median_ratio_ci(base, fast) == ci                       # seeded: the same samples, the same interval
    assert median_ratio_ci(fast, base).verdict == "slower"
    same = median_ratio_ci(_samples(10.0, 100, 3), _samples(10.0, 100, 4))
    assert same.verdict == "same" and same.lo < 1.0 < same.hi
    assert "95% CI" in ci.text() and "400/400 samples" in ci.text()


def test_interval_narrows_with_more_samples_and_samples_needed_follows() -> None:
    small = median_ratio_ci(_samples(10.0, 30, 5), _samples(8.0, 30, 6))
    large = median_ratio_ci(_samples(10.0, 1200, 7), _samples(8.0, 1200, 8))
    assert large.rel_halfwidth < small.rel_halfwidth / 3          # ~ sqrt(40) = 6.3x narrower
    need = samples_needed(_samples(10.0, 30, 5), _samples(8.0, 30, 6), rel_halfwidth=0.01)
    assert need > 30
    # the extrapolated count, when measured, gives an interval near the asked precision (within a factor 2)
    got = median_ratio_ci(_samples(10.0, need, 9), _samples(8.0, need, 10))
    assert 0.005 < got.rel_halfwidth < 0.02
    assert samples_needed(_samples(10.0, 1200, 7), _samples(8.0, 1200, 8), rel_halfwidth=0.5) < 1200


def test_block_bootstrap_widens_for_correlated_chunks() -> None:
    # chunks of 10 consecutive samples share a slow/fast machine state: resampling single samples understates it
    rng = np.random.default_rng(11)
    states = np.repeat(np.exp(rng.normal(0.0, 0.2, 30)), 10)
    base = 10.0 * states * np.exp(rng.normal(0, 0.02, 300))
    var = 8.0 * np.repeat(np.exp(rng.normal(0.0, 0.2, 30)), 10) * np.exp(rng.normal(0, 0.02, 300))
    assert median_ratio_ci(base, var, block=10).rel_halfwidth > median_ratio_ci(base, var, block=1).rel_halfwidth


def test_bad_samples_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 2 samples"):
        median_ratio_ci([1.0], [1.0, 2.0])
    with pytest.raises(ConfigError, match="positive"):
        median_ratio_ci([1.0, 0.0], [1.0, 2.0])
    with pytest.raises(ConfigError, match="confidence"):
        median_ratio_ci([1.0, 2.0], [1.0, 2.0], confidence=1.5)
