"""Spatial SVD (Jaderberg et al. 2014): kx1 conv (c->r, stride (s,1)) followed by 1xk conv (r->n, stride (1,s))."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.factorize.formats.base import MatrixFormat, conv_check, conv_geometry, copy_, input_hw
from pipeline.factorize.formats.onnx_nodes import Step, axis_attrs, numeric_pads


def _matricise(w: torch.Tensor) -> torch.Tensor:
    """M[(i,h),(o,w)] = W[o,i,h,w] -> (c kh) x (n kw)."""
    n, c, kh, kw = w.shape
    return w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)


class SpatialSVD(MatrixFormat):
    """Vertical then horizontal separable convs from the SVD of the (c k) x (n k) matricisation."""

    name = "spatial_svd"
    # The vertical conv sees (c kh) vertical patches: the rows of the matricisation. The data-aware error treats the
    # patches of neighbouring columns as uncorrelated (the horizontal conv sums kw of them).
    input_side = "rows"
    stat_kinds = ("vertical",)

    def check(self, layer: nn.Module) -> str | None:
        reason = conv_check(layer)
        if reason is None and (layer.kernel_size[0] == 1 or layer.kernel_size[1] == 1):
            return "1-D or 1x1 kernel: spatial SVD has nothing to separate"
        return reason

    def max_ranks(self, layer: nn.Conv2d) -> tuple[int, ...]:
        g = conv_geometry(layer)
        return (min(g["c"] * g["kh"], g["n"] * g["kw"]),)

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        return _matricise(weight)

    def fold(self, mat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        n, c, kh, kw = shape
        return mat.reshape(c, kh, n, kw).permute(2, 0, 1, 3)

    def split(self, left: torch.Tensor, right: torch.Tensor, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        n, c, kh, kw = shape
        r = right.shape[0]
        vert = left.reshape(c, kh, r).permute(2, 0, 1)[..., None]                  # (r, c, kh, 1)
        horiz = right.reshape(r, n, kw).permute(1, 0, 2)[:, :, None, :]            # (n, r, 1, kw)
        return {"vertical": vert.contiguous(), "horizontal": horiz.contiguous()}

    def reconstruct(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        v, h = factors["vertical"][..., 0], factors["horizontal"][:, :, 0, :]  # (r,c,kh), (n,r,kw)
        return torch.einsum("rch,nrw->nchw", v, h)

    def ranks_of(self, factors: dict[str, torch.Tensor]) -> tuple[int, ...]:
        return (factors["vertical"].shape[0],)

    def build(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> nn.Sequential:
        (r,) = ranks
        g = conv_geometry(layer)
        (sh, sw), (ph, pw), (dh, dw) = g["stride"], g["padding"], g["dilation"]
        return nn.Sequential(
            nn.Conv2d(g["c"], r, (g["kh"], 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False),
            nn.Conv2d(r, g["n"], (1, g["kw"]), stride=(1, sw), padding=(0, pw), dilation=(1, dw), bias=layer.bias is not None),
        )

    def load_factors(self, module: nn.Sequential, factors: dict[str, torch.Tensor]) -> None:
        copy_(module[0].weight, factors["vertical"])
        copy_(module[1].weight, factors["horizontal"])

    def onnx_steps(self, factors: dict[str, torch.Tensor], attrs: dict[str, Any],
                   in_hw: tuple[int, int] | None) -> list[Step]:
        # Rows are strided/padded by the vertical conv, columns by the horizontal one (exact for asymmetric pads).
        pads = numeric_pads(attrs, in_hw)
        return [Step(factors["vertical"], axis_attrs(attrs, pads, 0)),
                Step(factors["horizontal"], axis_attrs(attrs, pads, 1))]

    def macs(self, layer: nn.Conv2d, ranks: tuple[int, ...], out_hw: tuple[int, int],
             in_hw: tuple[int, int] | None = None) -> int:
        g = conv_geometry(layer)
        (r,) = ranks
        w_in = (in_hw or input_hw(layer, out_hw))[1]  # the vertical conv runs over all input columns
        return out_hw[0] * w_in * r * g["c"] * g["kh"] + out_hw[0] * out_hw[1] * g["n"] * r * g["kw"]

    def params(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> int:
        g = conv_geometry(layer)
        (r,) = ranks
        return r * (g["c"] * g["kh"] + g["n"] * g["kw"]) + (g["n"] if layer.bias is not None else 0)
