"""Linear SVD: Linear(in->r, no bias) -> Linear(r->out, bias), sqrt(s) folded into both."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.factorize.formats.base import MatrixFormat, copy_
from pipeline.factorize.formats.onnx_nodes import Step


class LinearSVD(MatrixFormat):
    """Truncated SVD of a fully connected layer's (out x in) weight."""

    name = "linear_svd"
    layer_types = (nn.Linear,)

    def check(self, layer: nn.Module) -> str | None:
        return None if isinstance(layer, nn.Linear) else f"{type(layer).__name__} is not a Linear"

    def max_ranks(self, layer: nn.Linear) -> tuple[int, ...]:
        return (min(layer.in_features, layer.out_features),)

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def fold(self, mat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return mat.reshape(shape)

    def split(self, left: torch.Tensor, right: torch.Tensor, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
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

    def onnx_steps(self, factors: dict[str, torch.Tensor], attrs: dict[str, Any],
                   in_hw: tuple[int, int] | None) -> list[Step]:
        # Gemm with transB=1 takes the (out x in) weights as torch stores them.
        return [Step(factors["first"], {"transB": 1}, op="Gemm"), Step(factors["last"], {"transB": 1}, op="Gemm")]

    def macs(self, layer: nn.Linear, ranks: tuple[int, ...], out_hw: tuple[int, int],
             in_hw: tuple[int, int] | None = None) -> int:
        (r,) = ranks
        return r * (layer.in_features + layer.out_features)

    def params(self, layer: nn.Linear, ranks: tuple[int, ...]) -> int:
        (r,) = ranks
        return r * (layer.in_features + layer.out_features) + (layer.out_features if layer.bias is not None else 0)
