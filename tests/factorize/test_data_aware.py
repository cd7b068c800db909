"""Data-aware (output-objective) decomposition: each format's factors minimise the layer's output error on the
calibration distribution. Checked against an independent numpy float64 solution of the same objective, against the
weight-space factors at the same rank, at full rank, and with singular input moments."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.factorize.activations import collect_stats
from pipeline.factorize.formats import FORMATS
from pipeline.factorize.formats.stats import LayerStats, regularise

EPS = 1e-6


def _correlated(n: int, d: int, rank: int, seed: int) -> np.ndarray:
    """``n`` samples (rows) of a d-dim input living mostly in a ``rank``-dim subspace: strongly correlated."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((d, rank))
    return rng.standard_normal((n, rank)) @ basis.T + 0.01 * rng.standard_normal((n, d))


def _numpy_whitened(w: np.ndarray, x: np.ndarray, r: int, eps: float = EPS) -> np.ndarray:
    """argmin_{rank r} ||(W - W_r) X^T||_F by the whitening formula, numpy float64: C = X^T X / m (+ ridge),
    L = chol(C), W L = U S V^T, W_r = U_r S_r V_r^T L^{-1}."""
    c = x.T @ x / x.shape[0]
    c = c + eps * np.trace(c) / c.shape[0] * np.eye(c.shape[0])
    l = np.linalg.cholesky(c)
    u, s, vt = np.linalg.svd(w @ l, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r] @ np.linalg.inv(l)


def _stats(kind: str, x: np.ndarray, eps: float = EPS) -> LayerStats:
    st = LayerStats(eps=eps)
    st.add(kind, torch.from_numpy(x.T))
    return st


def _out_err(w: np.ndarray, w_hat: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm((w - w_hat) @ x.T) / np.linalg.norm(w @ x.T))


def test_linear_svd_equals_numpy_whitened_solution_and_beats_weight_space() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 40))
    x = _correlated(600, 40, 5, seed=1)   # 40-dim inputs in a 5-dim subspace (+1% noise)
    fmt = FORMATS.get("linear_svd")
    wt = torch.from_numpy(w)
    for r in (2, 5, 8):
        data = fmt.reconstruct(fmt.decompose(wt, (r,), stats=_stats("patch", x))).numpy()
        weights = fmt.reconstruct(fmt.decompose(wt, (r,))).numpy()
        ref = _numpy_whitened(w, x, r)
        np.testing.assert_allclose(data, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
        e_data, e_w = _out_err(w, data, x), _out_err(w, weights, x)
        assert e_data < (0.9 if r == 2 else 0.1) * e_w, (r, e_data, e_w)


def test_channel_svd_conv_outputs_match_numpy_solution_on_im2col_samples() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 16, 3, padding=1, bias=True).double()
    # Correlated inputs: 6 channels that are mixtures of 2 smooth sources.
    src = F.avg_pool2d(torch.randn(40, 2, 12, 12, dtype=torch.float64), 3, 1, 1)
    x = torch.einsum("bshw,sc->bchw", src, torch.randn(2, 6, dtype=torch.float64)) + 0.01 * torch.randn(40, 6, 12, 12,
                                                                                                        dtype=torch.float64)
    fmt = FORMATS.get("channel_svd")
    stats = collect_stats(conv, {"": ("patch",)}, x, positions=10_000, max_images=100)[""]
    cols = F.unfold(x, 3, padding=1).permute(1, 0, 2).reshape(54, -1).numpy().T      # every im2col patch
    w = conv.weight.detach().reshape(16, -1).numpy()
    r = 4
    data = fmt.reconstruct(fmt.decompose(conv.weight.detach(), (r,), stats=stats)).reshape(16, -1).numpy()
    np.testing.assert_allclose(data, _numpy_whitened(w, cols, r), atol=1e-7 * np.abs(w).max())
    weights = fmt.reconstruct(fmt.decompose(conv.weight.detach(), (r,))).reshape(16, -1).numpy()
    assert _out_err(w, data, cols) < 0.6 * _out_err(w, weights, cols)
    # The whitened spectrum's tail energy is the output error on the calibration samples.
    s = fmt.data_spectra(conv.weight.detach(), stats)[0]
    predicted = np.sqrt((s[r:] ** 2).sum() / (s ** 2).sum())
    assert predicted == pytest.approx(_out_err(w, data, cols), rel=1e-4)


@pytest.mark.parametrize("name", ["channel_svd", "spatial_svd", "tucker2", "cp", "linear_svd"])
def test_full_rank_is_exact(name: str) -> None:
    torch.manual_seed(1)
    fmt = FORMATS.get(name)
    layer = nn.Linear(12, 10) if name == "linear_svd" else nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(8, 12) if name == "linear_svd" else torch.randn(8, 5, 9, 9)
    stats = collect_stats(layer, {"": fmt.stat_kinds}, x)[""]
    w = layer.weight.detach().double()
    ranks = fmt.max_ranks(layer)
    if name == "cp":
        ranks = (5 * 3 * 3,)  # a CP rank that can represent any 7x5x3x3 kernel exactly
    w_hat = fmt.reconstruct(fmt.decompose(w, ranks, stats=stats, cp_max_iters=500, cp_time_limit_s=20))
    tol = 1e-4 if name == "cp" else 1e-9
    assert float((w_hat.reshape(w.shape) - w).norm() / w.norm()) < tol


def test_singular_moment_stays_finite_and_regularised() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((10, 30))
    x = _correlated(5, 30, 3, seed=4)       # 5 samples in 30 dims: a rank-5 moment
    x[:, 7] = 0.0                          # a dead input
    fmt = FORMATS.get("linear_svd")
    for eps in (1e-6, 1e-3):
        factors = fmt.decompose(torch.from_numpy(w), (3,), stats=_stats("patch", x, eps))
        assert all(torch.isfinite(f).all() for f in factors.values())
        np.testing.assert_allclose(fmt.reconstruct(factors).numpy(), _numpy_whitened(w, x, 3, eps), atol=1e-6)
    assert np.linalg.eigvalsh(regularise(torch.from_numpy(x.T @ x)).numpy()).min() > 0
    zero = LayerStats()
    zero.add("patch", torch.zeros(30, 4, dtype=torch.float64))
    assert torch.isfinite(fmt.decompose(torch.from_numpy(w), (3,), stats=zero)["first"]).all()


@pytest.mark.parametrize("name", ["tucker2", "cp", "spatial_svd"])
def test_conv_formats_lower_output_error_than_weight_space(name: str) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(24, 32, 3, padding=1)
    # Inputs that occupy 4 of 24 channel directions (plus noise) and are spatially smooth.
    src = F.avg_pool2d(torch.randn(32, 4, 10, 10), 3, 1, 1)
    x = torch.relu(torch.einsum("bshw,sc->bchw", src, torch.randn(4, 24))) + 0.02 * torch.randn(32, 24, 10, 10)
    fmt = FORMATS.get(name)
    stats = collect_stats(conv, {"": fmt.stat_kinds}, x, positions=100)[""]
    ranks = {"tucker2": (4, 12), "cp": (8,), "spatial_svd": (8,)}[name]
    w = conv.weight.detach()
    y = F.conv2d(x, w, padding=1)

    def err(factors: dict[str, torch.Tensor]) -> float:
        w_hat = fmt.reconstruct(factors).reshape(w.shape).float()
        return float((F.conv2d(x, w_hat, padding=1) - y).norm() / y.norm())

    e_data = err(fmt.decompose(w, ranks, stats=stats))
    e_weights = err(fmt.decompose(w, ranks))
    assert e_data < 0.8 * e_weights, (e_data, e_weights)


def test_weight_space_path_unchanged_by_stats_argument() -> None:
    """stats=None is the weight-space path: the same bytes as calling without the argument."""
    torch.manual_seed(5)
    w = torch.randn(16, 8, 3, 3)
    for name, ranks in (("tucker2", (4, 6)), ("channel_svd", (5,)), ("spatial_svd", (5,)), ("cp", (6,))):
        fmt = FORMATS.get(name)
        a, b = fmt.decompose(w, ranks), fmt.decompose(w, ranks, stats=None)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_expanding_layer_uses_the_smaller_gram_and_still_matches_numpy() -> None:
    """More outputs than inputs (a 1x1 expansion): the d x d path gives the same whitened solution."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((50, 12))
    x = _correlated(300, 12, 4, seed=7)
    fmt = FORMATS.get("linear_svd")
    for r in (3, 12):
        data = fmt.reconstruct(fmt.decompose(torch.from_numpy(w), (r,), stats=_stats("patch", x))).numpy()
        np.testing.assert_allclose(data, _numpy_whitened(w, x, r), atol=1e-8 * np.abs(w).max())
