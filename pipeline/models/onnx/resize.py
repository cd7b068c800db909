"""ONNX ``Resize`` (opset 10+) and ``Upsample`` (opset 9) with torch: exact for every coordinate transformation and
nearest rounding mode of the ``nearest`` and ``linear`` modes.

The modes common exports write (torch's ``nearest``/``asymmetric``/``floor`` and ``linear`` with ``half_pixel``,
``pytorch_half_pixel`` or ``align_corners``) run as ``F.interpolate``, which is differentiable, fast and re-exports
as a ``Resize``; every other combination is evaluated separably, axis by axis, with index gathers and linear
weights, following the operator's definition (so ONNX Runtime's results are met to float rounding).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from pipeline.errors import InputError

__all__ = ["COORD_MODES", "NEAREST_MODES", "resize"]

COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_half_pixel_for_nn")
# "simple" is Upsample's and Resize-10's rule: floor when enlarging, ceil when shrinking.
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")
_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _targets(x: torch.Tensor, args: list[Any], a: dict[str, Any]) -> tuple[list[int], list[float]]:
    """Output size and scale of every axis (scale = out / in when sizes are given, as the operator defines)."""
    rank = x.dim()
    axes = [ax % rank for ax in a["axes"]] if a.get("axes") else list(range(rank))
    ins = [int(v) for v in x.shape]
    outs, scales = list(ins), [1.0] * rank
    sizes = a.get("sizes")
    if a.get("sizes_input") is not None:
        sizes = [int(v) for v in args[a["sizes_input"]].reshape(-1).tolist()]
    if sizes is not None:
        for ax, s in zip(axes, sizes):
            outs[ax] = int(s)
            scales[ax] = int(s) / ins[ax] if ins[ax] else 1.0
    else:
        for ax, s in zip(axes, a["scales"]):
            scales[ax] = float(s)
            outs[ax] = int(math.floor(ins[ax] * float(s)))
    return outs, scales


def _source_coords(out_len: int, in_len: int, scale: float, mode: str) -> torch.Tensor:
    d = torch.arange(out_len, dtype=torch.float64)
    if mode == "asymmetric":
        return d / scale
    if mode == "half_pixel":
        return (d + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (d + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(d)
    if mode == "align_corners":
        return d * ((in_len - 1) / (out_len - 1)) if out_len > 1 else torch.zeros_like(d)
    if mode == "tf_half_pixel_for_nn":
        return (d + 0.5) / scale
    # half_pixel_symmetric (opset 19): half_pixel re-centred when the output size was rounded.
    adjustment = out_len / (scale * in_len)
    offset = in_len / 2 * (1 - adjustment)
    return offset + (d + 0.5) / scale - 0.5


def _nearest_index(src: torch.Tensor, in_len: int, mode: str, scale: float) -> torch.Tensor:
    if mode == "simple":
        mode = "ceil" if scale < 1 else "floor"
    if mode == "round_prefer_floor":
        idx = torch.ceil(src - 0.5)
    elif mode == "round_prefer_ceil":
        idx = torch.floor(src + 0.5)
    elif mode == "floor":
        idx = torch.floor(src)
    else:
        idx = torch.ceil(src)
    return idx.clamp(0, in_len - 1).long()


def _generic(x: torch.Tensor, outs: Sequence[int], scales: Sequence[float], a: dict[str, Any]) -> torch.Tensor:
    for ax in range(x.dim()):
        in_len = int(x.shape[ax])
        if outs[ax] == in_len and scales[ax] == 1.0:
            continue
        src = _source_coords(outs[ax], in_len, scales[ax], a["coord"])
        if a["mode"] == "nearest":
            x = x.index_select(ax, _nearest_index(src, in_len, a["nearest_mode"], scales[ax]).to(x.device))
            continue
        src = src.clamp(0, in_len - 1)
        i0 = torch.floor(src).long()
        i1 = (i0 + 1).clamp(max=in_len - 1)
        shape = [1] * x.dim()
        shape[ax] = outs[ax]
        w = (src - i0.to(src.dtype)).to(x.dtype).reshape(shape).to(x.device)
        x = x.index_select(ax, i0.to(x.device)) * (1 - w) + x.index_select(ax, i1.to(x.device)) * w
    return x


def resize(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """``Resize``/``Upsample`` of ``args[0]``; ``a`` holds mode, coord, nearest_mode, axes and scales or sizes
    (constants, or ``sizes_input``: the argument position of a run-time sizes tensor)."""
    x = args[0]
    outs, scales = _targets(x, args, a)
    changed = [ax for ax in range(x.dim()) if outs[ax] != int(x.shape[ax]) or scales[ax] != 1.0]
    if any(ax < 2 for ax in changed):
        if a["mode"] != "nearest":
            raise InputError("Resize: linear resizing of the batch or channel axis is not supported; only spatial "
                             "axes (2 and up) may change size")
        return _generic(x, outs, scales, a)
    spatial = x.dim() - 2
    if not changed or spatial not in _INTERP:
        return x if not changed else _generic(x, outs, scales, a)
    by_scale = a.get("scales") is not None and a.get("sizes") is None and a.get("sizes_input") is None
    kw: dict[str, Any] = ({"scale_factor": [scales[ax] for ax in range(2, x.dim())]} if by_scale
                          else {"size": [outs[ax] for ax in range(2, x.dim())]})
    coord, mode = a["coord"], a["mode"]
    if mode == "nearest" and coord == "asymmetric" and (a["nearest_mode"] == "floor" or
                                                         (a["nearest_mode"] == "simple" and min(scales) >= 1)):
        return F.interpolate(x, mode="nearest", **kw)
    if mode == "linear" and all(outs[ax] > 1 for ax in changed):
        if coord in ("half_pixel", "pytorch_half_pixel"):
            return F.interpolate(x, mode=_INTERP[spatial], align_corners=False, **kw)
        if coord == "align_corners":
            return F.interpolate(x, size=[outs[ax] for ax in range(2, x.dim())], mode=_INTERP[spatial],
                                 align_corners=True)
    return _generic(x, outs, scales, a)
