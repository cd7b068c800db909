"""CP (Lebedev et al. 2015): 1x1 (c->R) -> depthwise kx1 -> depthwise 1xk -> 1x1 (R->n).

CP-ALS on the 4-way kernel, made fast and bounded (tensorly's CP-ALS takes ~26 s per iteration for all of
ResNet-18 on this project's 2-core test machine):

* **Compression first (CANDELINC).** The kernel is projected onto the leading min(n, R) output and min(c, R) input
  singular subspaces (the Tucker-2 HOSVD, from Gram eigendecompositions). ALS then runs on the small
  (R x R x k x k) core, which costs R^3 k^2 per mode update instead of n c k^2 R; the factors are lifted back at the
  end. A kernel of true CP rank R lies inside these subspaces, so nothing is lost for it.
* **Initialised from the Tucker solution**: channel factors start at the identity (= the HOSVD subspaces) and the
  spatial factors at the leading singular pair of each diagonal k x k core slice.
* **Bounded**: at most ``cp_max_iters`` sweeps and ``cp_time_limit_s`` seconds per layer, and an early stop once
  the relative fit stops improving. The achieved reconstruction error is reported by the factorizer per layer.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.factorize.formats.base import (Format, conv_check, conv_geometry, copy_, gram_spectrum, input_hw,
                                             leading_subspace, unfold)
from pipeline.factorize.formats.onnx_nodes import POINTWISE, Step, axis_attrs, numeric_pads
from pipeline.factorize.formats.stats import LayerStats, channel_output_error, sqrt_factor


def _khatri_rao(mats: list[torch.Tensor]) -> torch.Tensor:
    """Column-wise Kronecker product, rows ordered like a C-contiguous reshape of the remaining modes."""
    out = mats[0]
    for m in mats[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(-1, m.shape[1])
    return out


def _init_spatial(core: torch.Tensor, r: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial factors (kh x R, kw x R) from the rank-1 SVD of each diagonal core slice core[j, j]."""
    ra, rb, kh, kw = core.shape
    d = min(ra, rb, r)
    h = torch.randn(kh, r, generator=gen, dtype=torch.float64)
    x = torch.randn(kw, r, generator=gen, dtype=torch.float64)
    if d:
        idx = torch.arange(d)
        u, _, vh = torch.linalg.svd(core[idx, idx], full_matrices=False)  # batched (d, kh, kw)
        h[:, :d] = u[:, :, 0].T
        x[:, :d] = vh[:, 0, :].T
    return h, x


def _als(unfs: list[torch.Tensor], f: list[torch.Tensor], max_iters: int, deadline: float, tol: float) -> int:
    """CP-ALS sweeps on a 4-way tensor given by its unfoldings, updating ``f`` in place; returns sweeps run."""
    r = f[0].shape[1]
    eye = torch.eye(r, dtype=torch.float64)
    norm2 = float((unfs[0] * unfs[0]).sum())
    prev_fit, sweeps = None, 0
    while sweeps < max_iters and time.perf_counter() < deadline:
        for mode in range(4):
            others = [f[m] for m in range(4) if m != mode]
            mttkrp = unfs[mode] @ _khatri_rao(others)  # (size_mode, R)
            gram = others[0].T @ others[0]
            for o in others[1:]:
                gram = gram * (o.T @ o)
            # Tiny ridge relative to the Gram's scale keeps the solve defined when components collapse.
            ridge = 1e-12 * float(gram.diagonal().mean().clamp_min(1e-300))
            f[mode] = torch.linalg.solve(gram + ridge * eye, mttkrp.T).T
        x_last = f[3]
        # Scale lives in A; unit-norm B, H, X keep the next sweep's Gram matrices well conditioned.
        for m in (1, 2, 3):
            s = f[m].norm(dim=0).clamp_min(1e-300)
            f[m] = f[m] / s
            f[0] = f[0] * s
        sweeps += 1
        # Fit from quantities at hand: ||T - M||^2 = ||T||^2 - 2 <T, M> + ||M||^2, with <T, M> from the last
        # mode's MTTKRP (computed with the other factors of this same model; rescaling does not change M).
        inner = float((x_last * mttkrp).sum())
        g = torch.ones(r, r, dtype=torch.float64)
        for m in f:
            g = g * (m.T @ m)
        fit = 1.0 - max(norm2 - 2 * inner + float(g.sum()), 0.0) ** 0.5 / max(norm2, 1e-300) ** 0.5
        if prev_fit is not None and abs(fit - prev_fit) < tol:
            break
        prev_fit = fit
    return sweeps


def cp_als(
    w: torch.Tensor,
    r: int,
    max_iters: int = 50,
    time_limit_s: float = 2.0,
    seed: int = 0,
    tol: float = 1e-8,
    refine_iters: int = 5,
) -> tuple[list[torch.Tensor], int]:
    """CP decomposition of a 4-way tensor ``w`` (n, c, kh, kw) at rank ``r``.

    Args:
        w: the kernel.
        r: CP rank R.
        max_iters: cap on ALS sweeps on the compressed core (0 = the initialisation only).
        time_limit_s: wall-time cap for all sweeps of this layer.
        seed: seeds the columns that the Tucker initialisation cannot provide (R > k).
        tol: stop when the relative fit improves by less than this between sweeps.
        refine_iters: sweeps on the full tensor afterwards, when compression dropped directions (R < n or R < c).

    Returns:
        ``([A (n x R), B (c x R), H (kh x R), X (kw x R)], sweeps run)``, float64.
    """
    w = w.detach().to(torch.float64)
    n, c, kh, kw = w.shape
    gen = torch.Generator().manual_seed(seed)
    u_out = leading_subspace(unfold(w, 0), min(n, r))  # (n, ra)
    u_in = leading_subspace(unfold(w, 1), min(c, r))   # (c, rb)
    core = torch.einsum("oihw,oa,ib->abhw", w, u_out, u_in).contiguous()
    ra, rb = core.shape[:2]
    # Channel factors start at the HOSVD subspaces themselves (identity in core coordinates); extra columns
    # beyond a mode's size are seeded random.
    a = torch.cat([torch.eye(ra, min(ra, r), dtype=torch.float64),
                   torch.randn(ra, r - min(ra, r), generator=gen, dtype=torch.float64)], 1)
    b = torch.cat([torch.eye(rb, min(rb, r), dtype=torch.float64),
                   torch.randn(rb, r - min(rb, r), generator=gen, dtype=torch.float64)], 1)
    h, x = _init_spatial(core, r, gen)
    f = [a, b, h, x]
    deadline = time.perf_counter() + time_limit_s
    sweeps = _als([unfold(core, m) for m in range(4)], f, max(0, int(max_iters)), deadline, tol)
    f[0], f[1] = u_out @ f[0], u_in @ f[1]
    if (ra < n or rb < c) and refine_iters > 0:
        # The compressed solution ignores directions outside the leading subspaces; a few full sweeps recover them.
        sweeps += _als([unfold(w, m) for m in range(4)], f, int(refine_iters), deadline, tol)
    return f, sweeps


class CP(Format):
    """Rank-R canonical polyadic form as a 1x1 / depthwise / depthwise / 1x1 chain."""

    name = "cp"
    # The best rank-R CP approximation may not exist (the set is not closed); ALS gives an approximation only.
    exact_projection = False
    stat_kinds = ("channel_in",)

    def check(self, layer: nn.Module) -> str | None:
        reason = conv_check(layer)
        if reason is None and tuple(layer.kernel_size) == (1, 1):
            return "1x1 conv: CP has no spatial mode to separate (use channel_svd)"
        return reason

    def max_ranks(self, layer: nn.Conv2d) -> tuple[int, ...]:
        # CP rank can exceed every mode size, but beyond max(n, c) the 4-node chain never pays off.
        g = conv_geometry(layer)
        return (max(g["n"], g["c"]),)

    def matrices(self, weight: torch.Tensor) -> list[torch.Tensor]:
        return [unfold(weight, 0)]

    def decompose(self, weight: torch.Tensor, ranks: tuple[int, ...], stats: LayerStats | None = None,
                  **opts: Any) -> dict[str, torch.Tensor]:
        """CP-ALS factors; opts ``cp_max_iters`` (50), ``cp_time_limit_s`` (2.0), ``cp_refine_iters`` (5), ``cp_tol``
        (1e-8: stop once the relative fit changes less), ``seed`` (0).

        With ``stats``: CP-ALS of the input-whitened kernel ``W x_in L^T`` (``C = L L^T``, the input-channel moment),
        whose squared error is the output error with C per kernel offset; its compression step is the data-aware
        Tucker-2 subspace, so ALS starts from that solution. The input factor is un-whitened at the end.
        """
        (r,) = ranks
        w = weight.detach().to(torch.float64)
        l = sqrt_factor(stats.regularised("channel_in")) if stats is not None else None
        if l is not None:
            w = torch.einsum("oihw,ij->ojhw", w, l)
        (a, b, h, x), _ = cp_als(w, int(r), int(opts.get("cp_max_iters", 50)),
                                 float(opts.get("cp_time_limit_s", 2.0)), int(opts.get("seed", 0)),
                                 tol=float(opts.get("cp_tol", 1e-8)), refine_iters=int(opts.get("cp_refine_iters", 5)))
        if l is not None:
            b = torch.linalg.solve(l.T, b)  # W_hat L = CP(A, L^T B, H, X)
        return {"first": b.T.contiguous()[:, :, None, None], "vertical": h.T.contiguous()[:, None, :, None],
                "horizontal": x.T.contiguous()[:, None, None, :], "last": a.contiguous()[:, :, None, None]}

    def data_spectra(self, weight: torch.Tensor, stats: LayerStats) -> list[np.ndarray]:
        l = sqrt_factor(stats.regularised("channel_in"))
        return [gram_spectrum(unfold(torch.einsum("oihw,ij->ojhw", weight.detach().to(torch.float64), l), 0))]

    def output_error(self, weight: torch.Tensor, approx: torch.Tensor, stats: LayerStats) -> float:
        return channel_output_error(weight, approx, stats)

    def reconstruct(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        b = factors["first"][:, :, 0, 0].T
        h = factors["vertical"][:, 0, :, 0].T
        x = factors["horizontal"][:, 0, 0, :].T
        a = factors["last"][:, :, 0, 0]
        n, c, kh, kw = a.shape[0], b.shape[0], h.shape[0], x.shape[0]
        return (a @ _khatri_rao([b, h, x]).T).reshape(n, c, kh, kw)

    def ranks_of(self, factors: dict[str, torch.Tensor]) -> tuple[int, ...]:
        return (factors["first"].shape[0],)

    def build(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> nn.Sequential:
        (r,) = ranks
        g = conv_geometry(layer)
        (sh, sw), (ph, pw), (dh, dw) = g["stride"], g["padding"], g["dilation"]
        # The vertical depthwise conv takes the row stride/padding, the horizontal one the column stride/padding,
        # so each spatial axis is strided exactly once, like the dense conv.
        return nn.Sequential(
            nn.Conv2d(g["c"], r, 1, bias=False),
            nn.Conv2d(r, r, (g["kh"], 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=r, bias=False),
            nn.Conv2d(r, r, (1, g["kw"]), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=r, bias=False),
            nn.Conv2d(r, g["n"], 1, bias=layer.bias is not None),
        )

    def load_factors(self, module: nn.Sequential, factors: dict[str, torch.Tensor]) -> None:
        for i, k in enumerate(("first", "vertical", "horizontal", "last")):
            copy_(module[i].weight, factors[k])

    def onnx_steps(self, factors: dict[str, torch.Tensor], attrs: dict[str, Any],
                   in_hw: tuple[int, int] | None) -> list[Step]:
        pads = numeric_pads(attrs, in_hw)
        r = factors["first"].shape[0]
        return [Step(factors["first"], dict(POINTWISE)), Step(factors["vertical"], axis_attrs(attrs, pads, 0, groups=r)),
                Step(factors["horizontal"], axis_attrs(attrs, pads, 1, groups=r)), Step(factors["last"], dict(POINTWISE))]

    def macs(self, layer: nn.Conv2d, ranks: tuple[int, ...], out_hw: tuple[int, int],
             in_hw: tuple[int, int] | None = None) -> int:
        g = conv_geometry(layer)
        (r,) = ranks
        (ho, wo), (hi, wi) = out_hw, in_hw or input_hw(layer, out_hw)
        # 1x1 on the full input, vertical on (ho, wi), horizontal on (ho, wo), 1x1 on the output.
        return hi * wi * g["c"] * r + ho * wi * r * g["kh"] + ho * wo * r * g["kw"] + ho * wo * r * g["n"]

    def params(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> int:
        g = conv_geometry(layer)
        (r,) = ranks
        return r * (g["c"] + g["kh"] + g["kw"] + g["n"]) + (g["n"] if layer.bias is not None else 0)

