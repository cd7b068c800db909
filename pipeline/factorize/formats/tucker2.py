"""Tucker-2 (Kim et al. 2016): 1x1 (c->r1) -> kxk (r1->r2, stride) -> 1x1 (r2->n).

HOSVD through the eigendecomposition of each unfolding's Gram matrix (fast path); optional HOOI refinement.
Ranks are ``(r1, r2)``: input side, then output side.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.factorize.formats.base import Format, conv_check, conv_geometry, copy_, input_hw, leading_subspace
from pipeline.factorize.formats.onnx_nodes import POINTWISE, Step, spatial_attrs
from pipeline.factorize.formats.stats import LayerStats, channel_output_error, leading_eig, sqrt_factor


def _mode0(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def _mode1(w: torch.Tensor) -> torch.Tensor:
    return w.transpose(0, 1).reshape(w.shape[1], -1)


class Tucker2(Format):
    """Tucker decomposition along the output- and input-channel modes."""

    name = "tucker2"
    stat_kinds = ("channel_in", "channel_out")

    def check(self, layer: nn.Module) -> str | None:
        reason = conv_check(layer)
        if reason is None and tuple(layer.kernel_size) == (1, 1):
            return "1x1 conv: Tucker-2 would add two 1x1 convs around a 1x1 core (use channel_svd)"
        return reason

    def max_ranks(self, layer: nn.Conv2d) -> tuple[int, ...]:
        g = conv_geometry(layer)
        return (g["c"], g["n"])

    def matrices(self, weight: torch.Tensor) -> list[torch.Tensor]:
        return [_mode1(weight), _mode0(weight)]

    def decompose(self, weight: torch.Tensor, ranks: tuple[int, ...], stats: LayerStats | None = None,
                  **opts: Any) -> dict[str, torch.Tensor]:
        if stats is not None:
            return self._decompose_data(weight, ranks, stats)
        r1, r2 = ranks
        w = weight.detach().to(torch.float64)
        u_in = leading_subspace(_mode1(w), r1)    # (c, r1)
        u_out = leading_subspace(_mode0(w), r2)   # (n, r2)
        for _ in range(int(opts.get("hooi_iters", 0) or 0)):
            # HOOI: each subspace re-fit to the tensor projected on the other one.
            u_in = leading_subspace(_mode1(torch.einsum("oihw,or->rihw", w, u_out)), r1)
            u_out = leading_subspace(_mode0(torch.einsum("oihw,is->oshw", w, u_in)), r2)
        core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)  # (r2, r1, kh, kw)
        return {"first": u_in.T.contiguous()[:, :, None, None], "core": core.contiguous(),
                "last": u_out.contiguous()[:, :, None, None]}

    def _input_side(self, w: torch.Tensor, stats: LayerStats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L, eigenvalues, eigenvectors)`` of the whitened mode-1 Gram ``L^T W_(1) W_(1)^T L`` (descending)."""
        l = sqrt_factor(stats.regularised("channel_in"))
        z = l.T @ _mode1(w)                      # whitened input-mode unfolding (c x n kh kw)
        ev, vec = leading_eig(z @ z.T)
        return l, ev, vec

    def _output_moment(self, w: torch.Tensor, l: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        """Second moment of the layer outputs: measured, or ``sum_hw W_hw C W_hw^T`` when it was not collected."""
        if stats.has("channel_out"):
            return stats.regularised("channel_out")
        wl = _mode0(torch.einsum("oihw,ij->ojhw", w, l))
        return wl @ wl.T

    def _decompose_data(self, weight: torch.Tensor, ranks: tuple[int, ...],
                        stats: LayerStats) -> dict[str, torch.Tensor]:
        """Output-error Tucker-2 (input moment C = L L^T per kernel offset, output moment C_y).

        Input side: minimising ``sum_hw ||W_hw (I - Q) L||^2`` over rank-r1 maps Q gives ``Q = L V V^T L^{-1}`` with V
        the leading eigenvectors of ``L^T W_(1) W_(1)^T L`` (the generalized eigenproblem of the input-mode Gram
        weighted by C): the first 1x1 conv is ``V^T L^{-1}``. Output side: the leading eigenvectors of C_y (the
        output error of an orthogonal output projection is the C_y energy it drops). The core is the least-squares
        fit given both factors, ``U_out^T W_hw L V`` (exact because ``V^T L^{-1} C L^{-T} V = I``).
        """
        r1, r2 = (int(r) for r in ranks)
        w = weight.detach().to(torch.float64)
        l, _, vec = self._input_side(w, stats)
        v = vec[:, :r1]
        first = torch.linalg.solve(l.T, v).T    # V^T L^{-1}  (r1 x c)
        core_in = torch.einsum("oihw,is->oshw", w, l @ v)
        _, u = leading_eig(self._output_moment(w, l, stats))
        u_out = u[:, :r2].contiguous()
        core = torch.einsum("oshw,or->rshw", core_in, u_out)
        return {"first": first.contiguous()[:, :, None, None], "core": core.contiguous(),
                "last": u_out[:, :, None, None]}

    def data_spectra(self, weight: torch.Tensor, stats: LayerStats) -> list[np.ndarray]:
        w = weight.detach().to(torch.float64)
        l, ev_in, _ = self._input_side(w, stats)
        ev_out = torch.linalg.eigvalsh(self._output_moment(w, l, stats)).flip(0).clamp_min(0)
        return [ev_in.sqrt().numpy(), ev_out.sqrt().numpy()]

    def output_error(self, weight: torch.Tensor, approx: torch.Tensor, stats: LayerStats) -> float:
        return channel_output_error(weight, approx, stats)

    def reconstruct(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        u_in = factors["first"][:, :, 0, 0].T
        u_out = factors["last"][:, :, 0, 0]
        return torch.einsum("rshw,or,is->oihw", factors["core"], u_out, u_in)

    def project(self, weight: torch.Tensor, ranks: tuple[int, ...], **opts: Any) -> torch.Tensor:
        """HOSVD projection ``W x0 (U_out U_out^T) x1 (U_in U_in^T)`` (= reconstruct(decompose) without HOOI)."""
        if opts.get("hooi_iters"):
            return super().project(weight, ranks, **opts)
        r1, r2 = ranks
        w = weight.detach().to(torch.float64)
        u_in = leading_subspace(_mode1(w), r1)
        u_out = leading_subspace(_mode0(w), r2)
        return torch.einsum("op,pqhw,qi->oihw", u_out @ u_out.T, w, u_in @ u_in.T)

    def ranks_of(self, factors: dict[str, torch.Tensor]) -> tuple[int, ...]:
        return (factors["first"].shape[0], factors["last"].shape[1])

    def onnx_steps(self, factors: dict[str, torch.Tensor], attrs: dict[str, Any],
                   in_hw: tuple[int, int] | None) -> list[Step]:
        # The core keeps every attribute of the original node; the 1x1s around it change no geometry.
        return [Step(factors["first"], dict(POINTWISE)), Step(factors["core"], spatial_attrs(attrs)),
                Step(factors["last"], dict(POINTWISE))]

    def build(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> nn.Sequential:
        r1, r2 = ranks
        g = conv_geometry(layer)
        return nn.Sequential(
            nn.Conv2d(g["c"], r1, 1, bias=False),
            nn.Conv2d(r1, r2, (g["kh"], g["kw"]), stride=g["stride"], padding=g["padding"], dilation=g["dilation"], bias=False),
            nn.Conv2d(r2, g["n"], 1, bias=layer.bias is not None),
        )

    def load_factors(self, module: nn.Sequential, factors: dict[str, torch.Tensor]) -> None:
        copy_(module[0].weight, factors["first"])
        copy_(module[1].weight, factors["core"])
        copy_(module[2].weight, factors["last"])

    def macs(self, layer: nn.Conv2d, ranks: tuple[int, ...], out_hw: tuple[int, int],
             in_hw: tuple[int, int] | None = None) -> int:
        g = conv_geometry(layer)
        r1, r2 = ranks
        hw = out_hw[0] * out_hw[1]
        hi, wi = in_hw or input_hw(layer, out_hw)  # the first 1x1 runs at input resolution
        return hi * wi * g["c"] * r1 + hw * (r1 * r2 * g["kh"] * g["kw"] + r2 * g["n"])

    def params(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> int:
        g = conv_geometry(layer)
        r1, r2 = ranks
        return g["c"] * r1 + r1 * r2 * g["kh"] * g["kw"] + r2 * g["n"] + (g["n"] if layer.bias is not None else 0)
