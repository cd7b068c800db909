"""Channel SVD (Zhang et al. 2016 style): kxk conv (c->r, original stride) followed by a 1x1 conv (r->n)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.factorize.formats.base import Format, balanced_factors, conv_geometry, copy_


class ChannelSVD(Format):
    """W (n, c, k, k) as the n x (c k k) im2col matrix, truncated SVD, sqrt(s) folded into both factors."""

    name = "channel_svd"

    def max_ranks(self, layer: nn.Conv2d) -> tuple[int, ...]:
        g = conv_geometry(layer)
        return (min(g["n"], g["c"] * g["kh"] * g["kw"]),)

    def matrices(self, weight: torch.Tensor) -> list[torch.Tensor]:
        return [weight.reshape(weight.shape[0], -1)]

    def decompose(self, weight: torch.Tensor, ranks: tuple[int, ...], **opts: Any) -> dict[str, torch.Tensor]:
        (r,) = ranks
        n, c, kh, kw = weight.shape
        left, right = balanced_factors(weight.reshape(n, -1), r)
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

    def macs(self, layer: nn.Conv2d, ranks: tuple[int, ...], out_hw: tuple[int, int]) -> int:
        g = conv_geometry(layer)
        (r,) = ranks
        return out_hw[0] * out_hw[1] * r * (g["c"] * g["kh"] * g["kw"] + g["n"])

    def params(self, layer: nn.Conv2d, ranks: tuple[int, ...]) -> int:
        g = conv_geometry(layer)
        (r,) = ranks
        return r * (g["c"] * g["kh"] * g["kw"] + g["n"]) + (g["n"] if layer.bias is not None else 0)
