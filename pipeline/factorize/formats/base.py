"""The decomposition-format interface: the math (``decompose``/``reconstruct``) and the module it becomes.

Every format turns one layer into an ``nn.Sequential`` of plain ``nn.Conv2d``/``nn.Linear`` layers, so the exported
ONNX graph holds only ordinary Conv/Gemm nodes. The last sub-layer carries the original bias.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import nn


def resolved_padding(layer: nn.Conv2d) -> tuple[int, int] | None:
    """Numeric (ph, pw) of a conv, resolving ``"valid"``/``"same"``; None when "same" would need asymmetric padding."""
    if not isinstance(layer.padding, str):
        return (int(layer.padding[0]), int(layer.padding[1]))
    if layer.padding == "valid":
        return (0, 0)
    # "same" (stride 1 only, enforced by torch): total padding d*(k-1) per axis, split evenly when it is even.
    pads = []
    for k, d in zip(layer.kernel_size, layer.dilation):
        total = d * (k - 1)
        if total % 2:
            return None
        pads.append(total // 2)
    return (pads[0], pads[1])


def conv_geometry(layer: nn.Conv2d) -> dict[str, Any]:
    """Shape, stride, padding (numeric) and dilation of a conv as plain tuples."""
    n, c, kh, kw = layer.weight.shape
    return {"n": n, "c": c, "kh": kh, "kw": kw, "stride": tuple(layer.stride), "padding": resolved_padding(layer),
            "dilation": tuple(layer.dilation)}


def input_hw(layer: nn.Conv2d, out_hw: tuple[int, int]) -> tuple[int, int]:
    """Smallest input size giving ``out_hw`` (exact unless the stride drops trailing rows/columns).

    Sub-layers that run before the strided/padded part (CP's leading 1x1, spatial SVD's vertical conv along the
    width) work at input resolution, so their MACs need it.
    """
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    ph, pw = resolved_padding(layer) or (0, 0)
    kh, kw = layer.kernel_size
    return (max(1, (out_hw[0] - 1) * sh + dh * (kh - 1) + 1 - 2 * ph),
            max(1, (out_hw[1] - 1) * sw + dw * (kw - 1) + 1 - 2 * pw))


def unfold(w: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: that mode's index on rows, the others (in order) on columns."""
    return w.movedim(mode, 0).reshape(w.shape[mode], -1)


def gram_spectrum(mat: torch.Tensor) -> np.ndarray:
    """Singular values of ``mat`` (descending, float64) from the eigenvalues of its smaller Gram matrix.

    Eigendecomposing the Gram matrix gives the same spectrum as an SVD about 10x faster (METHODS.md).
    """
    m = mat.detach().to(torch.float64)
    g = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    ev = torch.linalg.eigvalsh(g).clamp_min(0).flip(0)
    return ev.sqrt().cpu().numpy()


def leading_subspace(mat: torch.Tensor, r: int) -> torch.Tensor:
    """Orthonormal basis (rows(mat) x r) of the r leading left singular vectors, via the Gram eigendecomposition."""
    m = mat.to(torch.float64)
    _, vecs = torch.linalg.eigh(m @ m.T)
    return vecs.flip(1)[:, :r].contiguous()


def balanced_factors(mat: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(left (rows x r), right (r x cols))`` with ``left @ right`` the best rank-r approximation of ``mat``.

    The leading singular subspace comes from the eigendecomposition of the smaller Gram matrix (about 10x faster
    than a full SVD, METHODS.md); the other factor is the exact projection of ``mat`` onto it, so at full rank the
    product reproduces ``mat`` to rounding. sqrt(s) is folded into both sides so neither factor has a large
    dynamic range (it matters once the factors are quantized).
    """
    m = mat.detach().to(torch.float64)
    if m.shape[0] <= m.shape[1]:
        u = leading_subspace(m, r)                    # (rows, r)
        proj = u.T @ m                                # diag(s) V^T
        s = proj.norm(dim=1)
    else:
        v = leading_subspace(m.T, r)                  # (cols, r)
        proj = m @ v                                  # U diag(s)
        s = proj.norm(dim=0)
    # Floor relative to s_max so directions with (numerically) zero energy do not divide by zero.
    scale = s.clamp_min(float(s.max().clamp_min(1e-300)) * 1e-12).sqrt()
    if m.shape[0] <= m.shape[1]:
        return u * scale, proj / scale[:, None]
    return proj / scale, scale[:, None] * v.T


def conv_check(layer: nn.Module) -> str | None:
    """Reasons shared by conv formats for leaving a layer dense (None = factorizable)."""
    if not isinstance(layer, nn.Conv2d):
        return f"{type(layer).__name__} is not a Conv2d"
    if layer.groups > 1:
        if layer.groups == layer.in_channels and layer.out_channels % layer.in_channels == 0:
            return "depthwise conv: nothing to factorize"
        return f"grouped conv (groups={layer.groups}): not factorized"
    if resolved_padding(layer) is None:
        return "padding='same' with an even kernel pads asymmetrically: not factorized (use numeric padding)"
    if layer.padding_mode != "zeros":
        return f"padding_mode {layer.padding_mode!r}: only zero padding keeps the factorized form exact"
    return None


class Format(ABC):
    """A low-rank form of a conv or linear layer."""

    name: str = ""
    layer_types: tuple[type, ...] = (nn.Conv2d,)

    def check(self, layer: nn.Module) -> str | None:
        """Why ``layer`` cannot take this format, or None when it can."""
        return conv_check(layer)

    @abstractmethod
    def max_ranks(self, layer: nn.Module) -> tuple[int, ...]:
        """Largest meaningful rank per rank dimension."""

    @abstractmethod
    def matrices(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """The matricisations whose spectra decide each rank dimension (same order as ``ranks``)."""

    def spectra(self, layer: nn.Module) -> list[np.ndarray]:
        """Singular values per rank dimension (descending, float64)."""
        return [gram_spectrum(m) for m in self.matrices(layer.weight.detach())]

    @abstractmethod
    def decompose(self, weight: torch.Tensor, ranks: tuple[int, ...], **opts: Any) -> dict[str, torch.Tensor]:
        """Factors of ``weight`` at ``ranks`` (float64)."""

    @abstractmethod
    def reconstruct(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The dense weight the factors represent (float64)."""

    @abstractmethod
    def build(self, layer: nn.Module, ranks: tuple[int, ...]) -> nn.Sequential:
        """Uninitialised factorized module with the right shapes (rebuilds a checkpoint's architecture)."""

    @abstractmethod
    def load_factors(self, module: nn.Sequential, factors: dict[str, torch.Tensor]) -> None:
        """Copy factors into a module made by ``build``."""

    @abstractmethod
    def macs(self, layer: nn.Module, ranks: tuple[int, ...], out_hw: tuple[int, int]) -> int:
        """Multiply-accumulates per sample of the factorized form."""

    @abstractmethod
    def params(self, layer: nn.Module, ranks: tuple[int, ...]) -> int:
        """Parameters of the factorized form (bias included)."""

    def to_module(self, layer: nn.Module, factors: dict[str, torch.Tensor]) -> nn.Sequential:
        """Factorized module carrying ``factors`` and the layer's bias, in the layer's dtype and device."""
        ranks = self.ranks_of(factors)
        # Cast before copying so float64 factors are not rounded through float32 parameters.
        mod = self.build(layer, ranks).to(dtype=layer.weight.dtype, device=layer.weight.device)
        self.load_factors(mod, factors)
        last = [m for m in mod.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
        if layer.bias is not None:
            with torch.no_grad():
                last.bias.copy_(layer.bias.detach())
        return mod

    @abstractmethod
    def ranks_of(self, factors: dict[str, torch.Tensor]) -> tuple[int, ...]:
        """The ranks a set of factors has."""


def dense_macs(layer: nn.Module, out_hw: tuple[int, int]) -> int:
    """MACs per sample of the dense layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    n, cg, kh, kw = layer.weight.shape
    return n * cg * kh * kw * out_hw[0] * out_hw[1]


def dense_params(layer: nn.Module) -> int:
    """Parameters of the dense layer."""
    return sum(p.numel() for p in layer.parameters(recurse=False))


def copy_(param: torch.Tensor, value: torch.Tensor) -> None:
    """In-place copy with a shape check that names both shapes."""
    if param.shape != value.shape:
        raise ValueError(f"factor shape {tuple(value.shape)} does not fit parameter {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(value.to(param.dtype))
