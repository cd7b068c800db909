"""Input/output second moments of one layer on calibration data, and the covariance maths the data-aware formats share.

A layer computes ``y = W x`` on some vectorisation ``x`` of its input (the im2col patch for a conv, the input vector
for a linear layer). Replacing ``W`` by ``W_hat`` changes the outputs by ``(W - W_hat) x``; its mean square over the
calibration distribution is ``tr((W - W_hat) C (W - W_hat)^T)`` with ``C = E[x x^T]`` (uncentred: the bias stays as it
is, so the mean of ``x`` matters too). Each statistic below is such a second moment for the vectorisation one format
needs:

* ``patch``: the (c kh kw) x (c kh kw) im2col patch moment (channel SVD; the input moment of a linear layer).
* ``vertical``: the (c kh) x (c kh) moment of vertical kh x 1 patches (spatial SVD's vertical conv input).
* ``channel_in``: the c x c moment of input pixels (Tucker-2 / CP input side).
* ``channel_out``: the n x n moment of the bias-free outputs (Tucker-2 / CP output side).

Float64 throughout; :func:`regularised` adds ``eps * tr(C)/d * I`` so singular moments (dead ReLU channels, fewer
samples than dimensions) still have a Cholesky factor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: statistic names (see the module docstring)
KINDS = ("patch", "vertical", "channel_in", "channel_out")
#: default relative ridge added to a moment before it is factored
DEFAULT_EPS = 1e-6


@dataclass
class LayerStats:
    """Accumulated second moments of one layer: ``sums[kind]`` (float64, d x d) over ``counts[kind]`` samples."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    eps: float = DEFAULT_EPS
    #: per kind, the sum of the samples (the mean's numerator)
    firsts: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, kind: str, x: torch.Tensor) -> None:
        """Accumulate ``x`` (d x m: m samples as columns) into ``kind``.

        The Gram of one batch is formed in the samples' own precision (float32 activations: a few hundred samples
        per product, ~1e-7 relative rounding, 2-4x faster than float64 on CPUs) and summed in float64.
        """
        xd = x.detach()
        g = (xd @ xd.T).to(torch.float64)
        f = xd.to(torch.float64).sum(dim=1)
        if kind in self.sums:
            self.sums[kind] += g
            self.firsts[kind] += f
        else:
            self.sums[kind], self.firsts[kind] = g, f
        self.counts[kind] = self.counts.get(kind, 0) + int(xd.shape[1])

    def has(self, kind: str) -> bool:
        """Whether ``kind`` was collected."""
        return kind in self.sums and self.counts.get(kind, 0) > 0

    def moment(self, kind: str) -> torch.Tensor:
        """``E[x x^T]`` of ``kind`` (float64), unregularised.

        Raises:
            KeyError: ``kind`` was not collected (name the statistics the format needs when collecting).
        """
        if not self.has(kind):
            raise KeyError(f"statistic {kind!r} was not collected for this layer (collected: {sorted(self.sums)})")
        return self.sums[kind] / self.counts[kind]

    def centred(self) -> "LayerStats":
        """The same statistics about their means (covariances): the variation a layer's rank has to carry.

        Post-ReLU inputs have a large mean that holds most of the uncentred output energy, so an energy threshold
        on uncentred spectra says little about the class-carrying variation; rank selection uses these instead.
        """
        out = LayerStats(eps=self.eps)
        for k, g in self.sums.items():
            n = self.counts[k]
            mu = self.firsts[k] / n
            out.sums[k] = g - n * torch.outer(mu, mu)
            out.firsts[k] = torch.zeros_like(mu)
            out.counts[k] = n
        return out

    def regularised(self, kind: str) -> torch.Tensor:
        """``E[x x^T] + eps * tr/d * I``: positive definite whenever the moment is not all zero."""
        return regularise(self.moment(kind), self.eps)


def regularise(c: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``c + eps * tr(c)/d * I`` (float64); an all-zero ``c`` becomes ``eps * I`` so it still factors."""
    c64 = c.to(torch.float64)
    d = c64.shape[0]
    scale = float(torch.trace(c64)) / max(d, 1)
    ridge = eps * (scale if scale > 0 else 1.0)
    return c64 + ridge * torch.eye(d, dtype=torch.float64)


def sqrt_factor(c: torch.Tensor) -> torch.Tensor:
    """``L`` with ``L L^T = c`` for a symmetric positive (semi)definite ``c``: Cholesky, or the eigen square root with
    floored eigenvalues when rounding makes the Cholesky fail (a near-singular moment whose ridge was too small)."""
    l, info = torch.linalg.cholesky_ex(c)
    if int(info) == 0:
        return l
    # Floor the eigenvalues (relative to their mean) so the factor stays invertible: the data-aware Tucker-2 and CP
    # un-whiten through it.
    ev, vec = torch.linalg.eigh(0.5 * (c + c.T))
    floor = max(float(ev.clamp_min(0).mean()), 1e-300) * DEFAULT_EPS
    return vec * ev.clamp_min(floor).sqrt()


def leading_eig(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clamped at 0) and eigenvectors of the symmetric PSD ``k`` (float64)."""
    k64 = k.to(torch.float64)
    ev, vec = torch.linalg.eigh(0.5 * (k64 + k64.T))  # exact symmetry for eigh
    return ev.flip(0).clamp_min(0), vec.flip(1)


def output_weighted_eig(wo: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of ``K = Wo C Wo^T`` (float64).

    ``K`` is the second moment of the layer outputs ``Wo x``. Its eigenvectors are the left singular vectors of the
    whitened matrix ``Wo L`` (``C = L L^T``) and its eigenvalues their squared singular values: the rank-r output
    error of the best approximation is the sum of the eigenvalues beyond r.
    """
    wo64 = wo.to(torch.float64)
    return leading_eig(wo64 @ c @ wo64.T)


def whitened_projection(wo: torch.Tensor, c: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(left (rows x r), right (r x cols))`` minimising ``||(Wo - left @ right) L||_F`` for ``C = L L^T``.

    The whitened SVD ``Wo L = U S V^T`` truncated and un-whitened gives ``U_r S_r V_r^T L^{-1} = U_r U_r^T Wo``: the
    projection of the outputs onto the leading eigenvectors of ``Wo C Wo^T``. That form needs no inverse of ``L``, so
    directions the data never excites are not amplified. sqrt of each right row's norm is folded into both sides so
    neither factor has a large dynamic range (it matters once the factors are quantized).
    """
    wo64 = wo.to(torch.float64)
    if wo64.shape[0] <= wo64.shape[1]:
        _, vec = output_weighted_eig(wo64, c)
        u = vec[:, :r]
    else:
        # More outputs than inputs (e.g. a 1x1 expansion): eigendecompose the smaller d x d Gram of Wo L instead;
        # U_r = Wo L V_r / s_r spans the same leading output subspace.
        m = wo64 @ sqrt_factor(c)
        ev, v = leading_eig(m.T @ m)
        u = m @ v[:, :r] / ev[:r].clamp_min(float(ev[0].clamp_min(1e-300)) * 1e-24).sqrt()
    right = u.T @ wo64
    norms = right.norm(dim=1)
    scale = norms.clamp_min(float(norms.max().clamp_min(1e-300)) * 1e-12).sqrt()
    return u * scale, right / scale[:, None]


def whitened_eigvals(wo: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``Wo C Wo^T`` (descending, min(rows, cols) of them) from the smaller of the two Grams, without
    eigenvectors (several times faster than :func:`output_weighted_eig`)."""
    wo64 = wo.to(torch.float64)
    if wo64.shape[0] <= wo64.shape[1]:
        k = wo64 @ c @ wo64.T
    else:
        m = wo64 @ sqrt_factor(c)
        k = m.T @ m
    return torch.linalg.eigvalsh(0.5 * (k + k.T)).flip(0).clamp_min(0)


def channel_output_error(weight: torch.Tensor, approx: torch.Tensor, stats: LayerStats) -> float:
    """Relative output error of a conv kernel ``approx`` for ``weight``: with the patch moment when it was collected
    (exact), else with the input-channel moment C per kernel offset (``sum_ohw E_ohw C E_ohw^T``, which ignores the
    correlation between offsets)."""
    w = weight.detach().to(torch.float64)
    e = w - approx.reshape(w.shape).to(torch.float64)
    if stats.has("patch"):
        c, wm, em = stats.regularised("patch"), w.reshape(w.shape[0], -1), e.reshape(w.shape[0], -1)
    else:
        c = stats.regularised("channel_in")
        wm = w.transpose(0, 1).reshape(w.shape[1], -1).T
        em = e.transpose(0, 1).reshape(w.shape[1], -1).T
    num = float(torch.einsum("ij,jk,ik->", em, c, em))
    den = float(torch.einsum("ij,jk,ik->", wm, c, wm))
    return num ** 0.5 / max(den, 1e-300) ** 0.5
