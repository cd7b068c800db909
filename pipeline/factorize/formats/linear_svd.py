"""Linear SVD: Linear(in->r, no bias) -> Linear(r->out, bias), sqrt(s) folded into both."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.factorize.formats.base import Format, balanced_factors, copy_


class LinearSVD(Format):
    """Truncated SVD of a fully connected layer's (out x in) weight."""

    name = "linear_svd"
    layer_types = (nn.Linear,)

    def check(self, layer: nn.Module) -> str | None:
        return None if isinstance(layer, nn.Linear) else f"{type(layer).__name__} is not a Linear"

    def max_ranks(self, layer: nn.Linear) -> tuple[int, ...]:
        return (min(layer.in_features, layer.out_features),)

    def matrices(self, weight: torch.Tensor) -> list[torch.Tensor]:
        return [weight]

    def decompose(self, weight: torch.Tensor, ranks: tuple[int, ...], **opts: Any) -> dict[str, torch.Tensor]:
        (r,) = ranks
        left, right = balanced_factors(weight, r)
        return {"first": right.contiguous(), "last": left.contiguous()}

    def reconstruct(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        return factors["last"] @ factors["first"]

    def ranks_of(self, factors: dict[str, torch.Tensor]) -> tuple[int, ...]:
        return (factors["first"].shape[0],)

    def build(self, layer: nn.Linear, ranks: tuple[int, ...]) -> nn.Sequential:
        (r,) = ranks
        return nn.Sequential(nn.Linear(layer.in_features, r, bias=False), nn.Linear(r, layer.out_features, bias=layer.bias is not None))

    def load_factors(self, module: nn.Sequential, factors: dict[str, torch.Tensor]) -> None:
        copy_(module[0].weight, factors["first"])
        copy_(module[1].weight, factors["last"])

    def macs(self, layer: nn.Linear, ranks: tuple[int, ...], out_hw: tuple[int, int]) -> int:
        (r,) = ranks
        return r * (layer.in_features + layer.out_features)

    def params(self, layer: nn.Linear, ranks: tuple[int, ...]) -> int:
        (r,) = ranks
        return r * (layer.in_features + layer.out_features) + (layer.out_features if layer.bias is not None else 0)
