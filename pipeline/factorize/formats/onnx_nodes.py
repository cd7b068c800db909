"""ONNX node chains for the formats: the same factor layout the torch modules carry, as plain Conv/Gemm nodes.

A format's ``to_onnx_nodes`` lists its sub-layers as :class:`Step` (weight + the node's attributes) and
:func:`chain` writes them as one node each, input of the first = the replaced node's input, output of the last = its
output, the bias on the last. Node names ``<layer>.<i>`` match the torch path's ``nn.Sequential`` children, so
profiles and reports attribute time to the same names on both paths.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from onnx import NodeProto, TensorProto, helper, numpy_helper


@dataclass
class Step:
    """One node of a chain: its op, weight (float64 torch factor) and attributes."""

    weight: torch.Tensor
    attrs: dict[str, Any] = field(default_factory=dict)
    op: str = "Conv"


def unique_namer(taken: set[str]) -> Callable[[str], str]:
    """A function returning ``base`` (or ``base_<k>``) not in ``taken``, and recording it there."""
    def name(base: str) -> str:
        out, k = base, 0
        while out in taken:
            k += 1
            out = f"{base}_{k}"
        taken.add(out)
        return out

    return name


def chain(steps: list[Step], *, x: str, y: str, name: str, bias: str | None, dtype: np.dtype,
          unique: Callable[[str], str]) -> tuple[list[NodeProto], list[TensorProto]]:
    """Nodes and weight initializers computing ``steps`` from value ``x`` into value ``y``.

    Args:
        steps: the sub-layers in order.
        x, y: input and output value names (the replaced node's).
        name: the replaced node's name (prefix of the new names).
        bias: name of the bias initializer the last node takes, or None.
        dtype: weight dtype written (the replaced kernel's).
        unique: name allocator (see :func:`unique_namer`).
    """
    nodes, inits = [], []
    for j, step in enumerate(steps):
        wname = unique(f"{name}.{j}.weight")
        w = step.weight.detach().cpu().numpy()
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.astype(dtype)), wname))
        last = j == len(steps) - 1
        out = y if last else unique(f"{name}.{j}_out")
        ins = [x, wname] + ([bias] if last and bias else [])
        nodes.append(helper.make_node(step.op, ins, [out], name=unique(f"{name}.{j}"), **step.attrs))
        x = out
    return nodes, inits


def numeric_pads(attrs: dict[str, Any], in_hw: tuple[int, int] | None) -> list[int]:
    """``[top, left, bottom, right]`` pads of a Conv node, resolving ``auto_pad`` (SAME_* needs the input size).

    Raises:
        ValueError: SAME_* padding without a known input size.
    """
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    if auto == "VALID":
        return [0, 0, 0, 0]
    if in_hw is None:
        raise ValueError(f"auto_pad={auto} needs the input size to split the padding per axis")
    kernel = attrs["kernel_shape"]
    strides = attrs.get("strides", [1, 1])
    dil = attrs.get("dilations", [1, 1])
    begin, end = [], []
    for size, k, s, d in zip(in_hw, kernel, strides, dil):
        total = max(0, (-(-size // s) - 1) * s + d * (k - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        # SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the beginning (ONNX Conv spec).
        b, e = (small, big) if auto == "SAME_UPPER" else (big, small)
        begin.append(b)
        end.append(e)
    return [begin[0], begin[1], end[0], end[1]]


def axis_attrs(attrs: dict[str, Any], pads: list[int], axis: int, groups: int = 1) -> dict[str, Any]:
    """Attributes of a 1-D (kx1 for ``axis`` 0, 1xk for 1) conv taking one axis's kernel, stride, pads, dilation."""
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    t, l, b, r = pads
    out = ({"kernel_shape": [kh, 1], "strides": [sh, 1], "pads": [t, 0, b, 0], "dilations": [dh, 1]} if axis == 0
           else {"kernel_shape": [1, kw], "strides": [1, sw], "pads": [0, l, 0, r], "dilations": [1, dw]})
    if groups > 1:
        out["group"] = groups
    return out


def spatial_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Every attribute of the original node but ``group`` (strides, pads, auto_pad, dilations): exact geometry."""
    return {k: v for k, v in attrs.items() if k != "group"}


POINTWISE = {"kernel_shape": [1, 1]}
