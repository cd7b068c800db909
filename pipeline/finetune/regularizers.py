"""Penalties that push factors towards orthogonality and singular values towards sparsity.

All functions are differentiable torch expressions (used as loss terms) and also serve as plain measurements
(the histories record them). Formulas (from the cited papers):

* ``orthogonality`` — Yang et al. 2020: ``L_o(A) = ||G - I||_F^2 / r^2`` with ``G`` the ``r x r`` Gram matrix on the
  smaller side of ``A`` (``A^T A`` for a tall ``A``, ``A A^T`` for a wide one).
* ``double_orthogonality`` — ELRT (Sui et al. 2024): ``||A^T A - I||_F^2 + ||A A^T - I||_F^2``.
* sparsity of a singular-value vector ``s``: ``l1``, ``hoyer`` (``||s||_1/||s||_2``), ``hoyer_square``
  (``||s||_1^2/||s||_2^2``) and ``erank`` (Roy & Vetterli's effective rank, the survey's scale-invariant choice).
* ``energy_keep_mask`` — the energy-threshold pruning rule used after the sparsification phase.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from pipeline.registry import Registry

# Guards denominators and logs; small enough not to bias realistic singular values (>= 1e-6).
_EPS = 1e-12


def _as_matrix(a: Tensor) -> Tensor:
    """Flatten a weight to 2-D: a conv ``(n, c, k, k)`` becomes ``(n, c k k)``; a matrix stays as it is."""
    if a.dim() == 2:
        return a
    if a.dim() < 2:
        raise ValueError(f"expected a matrix or conv weight, got a tensor of shape {tuple(a.shape)}")
    return a.reshape(a.shape[0], -1)


def orthogonality(a: Tensor) -> Tensor:
    """Yang et al.'s orthogonality loss ``||G - I||_F^2 / r^2`` on the smaller-side Gram matrix.

    Args:
        a: a 2-D factor (``n x r`` left singular vectors or ``r x m`` right ones); higher-rank tensors are
            flattened to ``(shape[0], -1)``.

    Returns:
        Scalar tensor; 0 exactly when the ``r`` vectors on the small side are orthonormal.
    """
    a = _as_matrix(a)
    rows, cols = a.shape
    # The Gram on the smaller side is the one that can equal the identity (the other has rank <= r).
    gram = a.t() @ a if rows >= cols else a @ a.t()
    r = gram.shape[0]
    eye = torch.eye(r, dtype=a.dtype, device=a.device)
    return ((gram - eye) ** 2).sum() / float(r * r)


def double_orthogonality(a: Tensor) -> Tensor:
    """ELRT's double soft orthogonality ``||A^T A - I||_F^2 + ||A A^T - I||_F^2`` (unscaled by ``rho/Phi``).

    For a non-square ``A`` (``p x q``, ``p != q``) the larger Gram has rank ``min(p, q)`` so the penalty is bounded
    below by ``|p - q|``; penalising both sides is what the paper prescribes (it regularises the column norms and
    the row norms at once).

    Args:
        a: factor matrix (a 1x1 conv weight ``(n, c, 1, 1)`` is flattened to ``(n, c)``).
    """
    a = _as_matrix(a)
    p, q = a.shape
    eye_q = torch.eye(q, dtype=a.dtype, device=a.device)
    eye_p = torch.eye(p, dtype=a.dtype, device=a.device)
    return ((a.t() @ a - eye_q) ** 2).sum() + ((a @ a.t() - eye_p) ** 2).sum()


def l1(s: Tensor) -> Tensor:
    """``sum |s|``."""
    return s.abs().sum()


def hoyer(s: Tensor) -> Tensor:
    """Hoyer measure ``||s||_1 / ||s||_2``: 1 for a one-hot vector, ``sqrt(len)`` for a constant one."""
    return s.abs().sum() / (s.norm(p=2) + _EPS)


def hoyer_square(s: Tensor) -> Tensor:
    """Hoyer-square ``||s||_1^2 / ||s||_2^2``: 1 for a one-hot vector, ``len`` for a constant one."""
    a = s.abs()
    return a.sum() ** 2 / ((a * a).sum() + _EPS)


def erank(s: Tensor) -> Tensor:
    """Effective rank ``exp(-sum p_i log p_i)`` with ``p = |s| / ||s||_1`` (Roy & Vetterli 2007).

    Equals the count of non-zero values when they are all equal, 1 for a one-hot vector. Zero entries contribute
    nothing (``0 log 0 = 0``); the clamp inside the log keeps the gradient finite there.
    """
    a = s.abs()
    p = a / (a.sum() + _EPS)
    return torch.exp(-(p * torch.log(p.clamp_min(_EPS))).sum())


SPARSITY: Registry[Callable[[Tensor], Tensor]] = Registry("sparsity regularizer")
SPARSITY.add("l1", l1)
SPARSITY.add("hoyer", hoyer)
SPARSITY.add("hoyer_square", hoyer_square)
SPARSITY.add("erank", erank)


def energy_keep_mask(s: Tensor, energy: float) -> Tensor:
    """Energy-threshold pruning: drop the smallest singular values whose squared sum is ``<= energy * total``.

    Equivalent to keeping the smallest set of largest values with ``sum kept s^2 >= (1 - energy) * total``.
    At least one value is always kept. Ties at the threshold are decided in favour of dropping (the rule is ``<=``),
    with a relative tolerance of 1e-9 so that a threshold computed from the same numbers is met exactly.

    Args:
        s: 1-D tensor of singular values (any order, any sign; magnitudes are used).
        energy: fraction ``e`` in ``[0, 1)``.

    Returns:
        Boolean mask, same length as ``s``, True where the value is kept.
    """
    if s.dim() != 1 or s.numel() == 0:
        raise ValueError(f"expected a non-empty 1-D tensor of singular values, got shape {tuple(s.shape)}")
    if not 0.0 <= energy < 1.0:
        raise ValueError(f"energy threshold must be in [0, 1), got {energy}")
    # float64: cumulative sums of many small squares must not lose the values being compared.
    sq = s.detach().to(torch.float64).abs() ** 2
    total = float(sq.sum())
    order = torch.argsort(sq)  # ascending: the candidates for dropping come first
    cum = torch.cumsum(sq[order], dim=0)
    limit = energy * total * (1.0 + 1e-9)
    n_drop = int((cum <= limit).sum())
    n_drop = min(n_drop, s.numel() - 1)
    keep = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
    keep[order[:n_drop].to(s.device)] = False
    return keep


def aligned_rank(rank: int, align: int, full: int) -> int:
    """Round ``rank`` up to a multiple of ``align`` (hardware-friendly widths), never beyond ``full``."""
    if align <= 1:
        return max(1, min(rank, full))
    up = -(-rank // align) * align
    return max(1, min(up, full))
