"""CP (Lebedev et al. 2015): 1x1 (c->R) -> depthwise kx1 -> depthwise 1xk -> 1x1 (R->n).

CP-ALS on the 4-way kernel, made fast and bounded: initialised from the leading singular subspaces of each
unfolding (seeded random columns where R exceeds a mode's size), capped in iterations and wall time per layer.
The achieved reconstruction error is reported by the factorizer like every other format's.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from pipeline.factorize.formats.base import Format, conv_check, conv_geometry, copy_, leading_subspace


def _init(mat: torch.Tensor, r: int, gen: torch.Generator) -> torch.Tensor:
    k = min(r, mat.shape[0])
    base = leading_subspace(mat, k)
    if k == r:
        return base
    extra = torch.randn(mat.shape[0], r - k, generator=gen, dtype=torch.float64)
    return torch.cat([base, extra], 1)


def cp_als(w: torch.Tensor, r: int, max_iters: int = 50, time_limit_s: float = 2.0, seed: int = 0) -> list[torch.Tensor]:
    """CP decomposition of a 4-way tensor ``w`` (n, c, kh, kw) at rank ``r``: factors [A, B, H, X] (float64)."""
    w = w.to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    unf = [w.reshape(w.shape[0], -1), w.transpose(0, 1).reshape(w.shape[1], -1),
           w.permute(2, 0, 1, 3).reshape(w.shape[2], -1), w.permute(3, 0, 1, 2).reshape(w.shape[3], -1)]
    f = [_init(u, r, gen) for u in unf]
    norm = w.norm()
    t0 = time.perf_counter()
    eye = torch.eye(r, dtype=torch.float64) * 1e-10
    for _ in range(max(0, max_iters)):
        a, b, h, x = f
        # Each update: factor = (tensor x_other factors) @ pinv(Hadamard product of the others' Gram matrices).
        m = torch.einsum("oiyx,ir,yr,xr->or", w, b, h, x)
        a = torch.linalg.solve((b.T @ b) * (h.T @ h) * (x.T @ x) + eye, m.T).T
        m = torch.einsum("oiyx,or,yr,xr->ir", w, a, h, x)
        b = torch.linalg.solve((a.T @ a) * (h.T @ h) * (x.T @ x) + eye, m.T).T
        m = torch.einsum("oiyx,or,ir,xr->yr", w, a, b, x)
        h = torch.linalg.solve((a.T @ a) * (b.T @ b) * (x.T @ x) + eye, m.T).T
        m = torch.einsum("oiyx,or,ir,yr->xr", w, a, b, h)
        x = torch.linalg.solve((a.T @ a) * (b.T @ b) * (h.T @ h) + eye, m.T).T
        # Keep B, H, X unit-norm columns (scale lives in A) so the iteration stays well conditioned.
        for t in (b, h, x):
            s = t.norm(dim=0).clamp_min(1e-12)
            t /= s
            a *= s
        f = [a, b, h, x]
        if time.perf_counter() - t0 > time_limit_s:
            break
    if not norm > 0:
        return f
    return f


class CP(Format):
    """Rank-R canonical polyadic form as a 1x1 / depthwise / depthwise / 1x1 chain."""

    name = "cp"

    def check(self, layer: nn.Module) -> str | None:
        reason = conv_check(layer)
        if reason is None and tuple(layer.kernel_size) == (1, 1):
            return "1x1 conv: CP has no spatial mode to separate (use channel_svd)"
        return reason

    def max_ranks(self, layer: nn.Conv2d) -> tuple[int, ...]:
        g = conv_geometry(layer)
        return (max(g["n"], g["c"]),)

    def matrices(self, weight: torch.Tensor) -> list[torch.Tensor]:
        return [weight.reshape(weight.shape[0], -1)]

    def decompose(self, weight: torch.Tensor, ranks: tuple[int, ...], **opts: Any) -> dict[str, torch.Tensor]:
        (r,) = ranks
        a, b, h, x = cp_als(weight.detach(), r, int(opts.get("cp_max_iters", 50)), float(opts.get("cp_time_limit_s", 2.0)))
        return {"first": b.T.contiguous()[:, :, None, None], "vertical": h.T.contiguous()[:, None, :, None],
                "horizontal": x.T.contiguous()[:, None, None, :], "last": a.contiguous()[:, :, None, None]}

    def reconstruct(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        b = factors["first"][:, :, 0, 0].T
        h = factors["vertical"][:, 0, :, 0].T
        x = factors["horizontal"][:, 0, 0, :].T
        a = factors["last"][:, :, 0, 0]
        return torch.einsum("or,ir,yr,xr->oiyx", a, b, h, x)

    def ranks_of(self, factors: dict[str, torch.Tensor]) -> tuple[int, ...]:
        return (factors["first"].shape[0],)

    def build(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> nn.Sequential:
        (r,) = ranks
        g = conv_geometry(layer)
        (sh, sw), (ph, pw), (dh, dw) = g["stride"], g["padding"], g["dilation"]
        return nn.Sequential(
            nn.Conv2d(g["c"], r, 1, bias=False),
            nn.Conv2d(r, r, (g["kh"], 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=r, bias=False),
            nn.Conv2d(r, r, (1, g["kw"]), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=r, bias=False),
            nn.Conv2d(r, g["n"], 1, bias=layer.bias is not None),
        )

    def load_factors(self, module: nn.Sequential, factors: dict[str, torch.Tensor]) -> None:
        for i, k in enumerate(("first", "vertical", "horizontal", "last")):
            copy_(module[i].weight, factors[k])

    def macs(self, layer: nn.Conv2d, ranks: tuple[int, ...], out_hw: tuple[int, int]) -> int:
        g = conv_geometry(layer)
        (r,) = ranks
        hw = out_hw[0] * out_hw[1]
        sh, sw = g["stride"]
        return hw * sh * sw * g["c"] * r + hw * sw * r * g["kh"] + hw * r * g["kw"] + hw * r * g["n"]

    def params(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> int:
        g = conv_geometry(layer)
        (r,) = ranks
        return r * (g["c"] + g["kh"] + g["kw"] + g["n"]) + (g["n"] if layer.bias is not None else 0)
