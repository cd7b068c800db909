"""The decomposition-format interface: one implementation of each format's maths, used by every path.

A format offers ``decompose`` (factors at given ranks), ``reconstruct`` (the dense weight of factors), ``project``
(the nearest weight of the format's form at given ranks, what LRA's projection needs), ``macs``/``params``,
``to_module`` (an ``nn.Sequential`` of plain ``nn.Conv2d``/``nn.Linear``: the torch path) and ``to_onnx_nodes``
(the chain of plain Conv/Gemm nodes the ONNX-graph path writes). The last sub-layer carries the original bias.
Factors are float64 torch tensors; the graph path converts numpy <-> torch at its boundary.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np
import torch
from onnx import NodeProto, TensorProto
from torch import nn

from pipeline.factorize.formats.onnx_nodes import Step, chain
from pipeline.factorize.formats.stats import LayerStats, whitened_eigvals, whitened_projection


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

    Eigendecomposing the Gram matrix gives the same spectrum as an SVD about 10x faster.
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


def truncated(mat: torch.Tensor, r: int) -> torch.Tensor:
    """Best rank-``r`` approximation of ``mat`` (Eckart-Young, float64 SVD); ``mat`` itself (float64) at full rank."""
    m64 = mat.detach().to(torch.float64)
    if r >= min(m64.shape):
        return m64.clone()
    u, s, vh = torch.linalg.svd(m64, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


def balanced_factors(mat: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(left (rows x r), right (r x cols))`` with ``left @ right`` the best rank-r approximation of ``mat``.

    The leading singular subspace comes from the eigendecomposition of the smaller Gram matrix (about 10x faster
    than a full SVD); the other factor is the exact projection of ``mat`` onto it, so at full rank the
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
    #: ``project`` gives the nearest tensor of the form (False: only an approximation, e.g. CP-ALS)
    exact_projection: bool = True
    #: the statistics (:mod:`pipeline.factorize.formats.stats`) the data-aware ``decompose`` needs
    stat_kinds: tuple[str, ...] = ()

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

    def data_spectra(self, weight: torch.Tensor, stats: LayerStats) -> list[np.ndarray]:
        """Per rank dimension, the singular values of the *whitened* matricisation (descending, float64).

        Their squared tail beyond rank r, over the total, is the relative squared output error of truncating that
        dimension on the calibration distribution: the energy selector applied to them keeps output energy.
        """
        raise NotImplementedError(f"{self.name} has no data-aware spectra")

    def output_error(self, weight: torch.Tensor, approx: torch.Tensor, stats: LayerStats) -> float:
        """Relative output error ``||(W - approx) x|| / ||W x||`` (RMS over the calibration distribution)."""
        raise NotImplementedError(f"{self.name} has no data-aware output error")

    @abstractmethod
    def decompose(self, weight: torch.Tensor, ranks: tuple[int, ...], stats: LayerStats | None = None,
                  **opts: Any) -> dict[str, torch.Tensor]:
        """Factors of ``weight`` at ``ranks`` (float64).

        ``stats=None`` minimises the weight error; with the layer's calibration statistics (``stat_kinds``) the
        factors minimise the error of the layer's outputs on that distribution instead.
        """

    @abstractmethod
    def reconstruct(self, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The dense weight the factors represent (float64)."""

    def project(self, weight: torch.Tensor, ranks: tuple[int, ...], **opts: Any) -> torch.Tensor:
        """The weight of the format's form at ``ranks`` nearest to ``weight`` (float64, same shape).

        Equals ``reconstruct(decompose(weight, ranks))`` to rounding; formats override it with a cheaper
        expression of the same projection.
        """
        return self.reconstruct(self.decompose(weight, ranks, **opts)).reshape(weight.shape)

    @abstractmethod
    def build(self, layer: nn.Module, ranks: tuple[int, ...]) -> nn.Sequential:
        """Uninitialised factorized module with the right shapes (rebuilds a checkpoint's architecture)."""

    @abstractmethod
    def load_factors(self, module: nn.Sequential, factors: dict[str, torch.Tensor]) -> None:
        """Copy factors into a module made by ``build``."""

    @abstractmethod
    def macs(self, layer: nn.Module, ranks: tuple[int, ...], out_hw: tuple[int, int],
             in_hw: tuple[int, int] | None = None) -> int:
        """Multiply-accumulates per sample of the factorized form (``in_hw``: measured input size, else derived)."""

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

    @abstractmethod
    def onnx_steps(self, factors: dict[str, torch.Tensor], attrs: dict[str, Any],
                   in_hw: tuple[int, int] | None) -> list[Step]:
        """The chain's nodes (weight + attributes) replacing a node with attributes ``attrs``."""

    def to_onnx_nodes(self, factors: dict[str, torch.Tensor], *, x: str, y: str, name: str, bias: str | None,
                      attrs: dict[str, Any], dtype: np.dtype, unique: Callable[[str], str],
                      in_hw: tuple[int, int] | None = None) -> tuple[list[NodeProto], list[TensorProto]]:
        """The ONNX node chain (and weight initializers) computing what ``to_module`` computes.

        Args:
            factors: from :meth:`decompose`.
            x, y: the replaced node's input and output value names; ``name`` its node name.
            bias: the bias initializer's name (taken by the last node), or None.
            attrs: the replaced Conv node's attributes (kernel_shape, strides, pads, auto_pad, dilations).
            dtype: weight dtype written.
            unique: allocator of fresh names (:func:`pipeline.factorize.formats.onnx_nodes.unique_namer`).
            in_hw: the node's input size (resolves auto_pad SAME_* where the format splits the axes).
        """
        return chain(self.onnx_steps(factors, attrs, in_hw), x=x, y=y, name=name, bias=bias, dtype=dtype,
                     unique=unique)


class MatrixFormat(Format):
    """A format that is the truncated SVD of one matricisation of the weight (channel, spatial, linear SVD).

    ``matrix`` matricises, ``fold`` is its inverse, ``split`` turns the two factors of the matrix into the
    format's factors; SVD training trains ``U diag(s) V`` of the same matricisation and deploys through ``split``.
    """

    @abstractmethod
    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The matricisation the format truncates."""

    @abstractmethod
    def fold(self, mat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """The weight of ``shape`` whose matricisation is ``mat`` (inverse of :meth:`matrix`)."""

    @abstractmethod
    def split(self, left: torch.Tensor, right: torch.Tensor, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """The format's factors for ``matrix(W) ~= left (rows x r) @ right (r x cols)``, ``W`` of ``shape``."""

    #: which side of ``matrix`` the layer's input enters: "cols" (``y = M x``) or "rows" (``y = M^T x``)
    input_side: str = "cols"
    #: the statistic whose moment weights the input side
    stat_kinds = ("patch",)

    def matrices(self, weight: torch.Tensor) -> list[torch.Tensor]:
        return [self.matrix(weight)]

    def output_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The matricisation with outputs on rows and the input vectorisation (``stat_kinds[0]``) on columns."""
        m = self.matrix(weight.detach().to(torch.float64))
        return m if self.input_side == "cols" else m.T

    def decompose(self, weight: torch.Tensor, ranks: tuple[int, ...], stats: LayerStats | None = None,
                  **opts: Any) -> dict[str, torch.Tensor]:
        (r,) = ranks
        if stats is None:
            left, right = balanced_factors(self.matrix(weight), r)
            return self.split(left, right, tuple(weight.shape))
        # Whitened SVD: minimise ||(Wo - A B) L|| with C = L L^T the regularised input moment.
        left, right = whitened_projection(self.output_matrix(weight), stats.regularised(self.stat_kinds[0]), int(r))
        if self.input_side == "rows":  # M = Wo^T ~= right^T left^T
            left, right = right.T.contiguous(), left.T.contiguous()
        return self.split(left, right, tuple(weight.shape))

    def data_spectra(self, weight: torch.Tensor, stats: LayerStats) -> list[np.ndarray]:
        wo = self.output_matrix(weight)
        ev = whitened_eigvals(wo, stats.regularised(self.stat_kinds[0]))
        return [ev[:min(wo.shape)].sqrt().numpy()]

    def output_error(self, weight: torch.Tensor, approx: torch.Tensor, stats: LayerStats) -> float:
        c = stats.regularised(self.stat_kinds[0])
        wo = self.output_matrix(weight)
        e = wo - self.output_matrix(approx.reshape(weight.shape))
        den = float(torch.einsum("ij,jk,ik->", wo, c, wo))
        return float(torch.einsum("ij,jk,ik->", e, c, e)) ** 0.5 / max(den, 1e-300) ** 0.5

    def project(self, weight: torch.Tensor, ranks: tuple[int, ...], **opts: Any) -> torch.Tensor:
        return self.fold(truncated(self.matrix(weight.detach()), int(ranks[0])), tuple(weight.shape))


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
