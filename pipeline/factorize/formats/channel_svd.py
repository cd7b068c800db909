"""Channel SVD (Zhang et al. 2016 style): kxk conv (c->r, original stride) followed by a 1x1 conv (r->n).

On a 1x1 conv this is the plain SVD of the channel matrix: a 1x1 -> 1x1 pair.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.factorize.formats.base import MatrixFormat, conv_geometry, copy_
from pipeline.factorize.formats.onnx_nodes import POINTWISE, Step, spatial_attrs


class ChannelSVD(MatrixFormat):
    """W (n, c, k, k) as the n x (c k k) im2col matrix, truncated SVD, sqrt(s) folded into both factors."""

    name = "channel_svd"

    def max_ranks(self, layer: nn.Conv2d) -> tuple[int, ...]:
        g = conv_geometry(layer)
        return (min(g["n"], g["c"] * g["kh"] * g["kw"]),)

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(weight.shape[0], -1)

    def fold(self, mat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return mat.reshape(shape)

    def split(self, left: torch.Tensor, right: torch.Tensor, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        n, c, kh, kw = shape
        r = right.shape[0]
        return {"first": right.reshape(r, c, kh, kw).contiguous(), "last": left.contiguous()[:, :, None, None]}

    def reconstruct(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        f, l = factors["first"], factors["last"]
        r = f.shape[0]
        return (l.reshape(-1, r) @ f.reshape(r, -1)).reshape(l.shape[0], *f.shape[1:])

    def ranks_of(self, factors: dict[str, torch.Tensor]) -> tuple[int, ...]:
        return (factors["first"].shape[0],)

    def build(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> nn.Sequential:
        (r,) = ranks
        g = conv_geometry(layer)
        return nn.Sequential(
            nn.Conv2d(g["c"], r, (g["kh"], g["kw"]), stride=g["stride"], padding=g["padding"], dilation=g["dilation"], bias=False),
            nn.Conv2d(r, g["n"], 1, bias=layer.bias is not None),
        )

    def load_factors(self, module: nn.Sequential, factors: dict[str, torch.Tensor]) -> None:
        copy_(module[0].weight, factors["first"])
        copy_(module[1].weight, factors["last"])

    def onnx_steps(self, factors: dict[str, torch.Tensor], attrs: dict[str, Any],
                   in_hw: tuple[int, int] | None) -> list[Step]:
        # The kxk conv keeps every attribute of the original node; the 1x1 changes no geometry.
        return [Step(factors["first"], spatial_attrs(attrs)), Step(factors["last"], dict(POINTWISE))]

    def macs(self, layer: nn.Conv2d, ranks: tuple[int, ...], out_hw: tuple[int, int],
             in_hw: tuple[int, int] | None = None) -> int:
        g = conv_geometry(layer)
        (r,) = ranks
        return out_hw[0] * out_hw[1] * r * (g["c"] * g["kh"] * g["kw"] + g["n"])

    def params(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> int:
        g = conv_geometry(layer)
        (r,) = ranks
        return r * (g["c"] * g["kh"] * g["kw"] + g["n"]) + (g["n"] if layer.bias is not None else 0)
