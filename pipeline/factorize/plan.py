"""The plan and per-layer report types, and the planning rules the torch and the ONNX-graph paths share.

Both factorizers (:mod:`pipeline.factorize.swap` for torch models, :mod:`pipeline.factorize.onnx_graph` for graphs
the importer cannot convert) and the whole-model budget selector (:mod:`pipeline.factorize.budget`) work on these
types; none of them imports another for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from torch import nn

from pipeline.factorize.formats import Format

#: formats that cannot take a 1x1 conv (no spatial mode, or nothing to separate); there the channel SVD is the form
NO_POINTWISE_FORM = ("tucker2", "spatial_svd", "cp")
#: reason prefixes of layers no low-rank format can touch (the report shows the MACs they hold)
OUT_OF_REACH = ("depthwise conv", "grouped conv")


@dataclass
class LayerReport:
    """One row of the per-layer factorization table."""

    name: str
    kind: str
    shape: list[int]
    stride: list[int]
    format: str | None
    ranks: list[int] | None
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    rel_error: float | None
    status: str  # "factorized" | "dense"
    reason: str


@dataclass
class Plan:
    """The decision for one layer."""

    name: str
    layer: nn.Module
    out_hw: tuple[int, int]
    in_hw: tuple[int, int] = (1, 1)
    fmt: Format | None = None
    ranks: tuple[int, ...] | None = None
    reason: str = ""
    note: str = ""
    # Every admissible (format, ranks, note) of method=auto, so break_even can re-decide by measured latency.
    candidates: list[tuple[Format, tuple[int, ...], str]] = field(default_factory=list)


def target_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear layers in definition order (their qualified names)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at qualified ``name``."""
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def pointwise_format(method: str, kernel: tuple[int, int]) -> tuple[str, str]:
    """``(format, note)`` for a conv of ``kernel`` under ``method``: the rule both paths apply to 1x1 convs.

    A 1x1 conv is a channel matrix: Tucker-2 would wrap a 1x1 core in two 1x1s, and spatial SVD and CP have no
    spatial mode. Its form is the channel SVD (a 1x1 -> 1x1 pair), taken where it pays by the usual
    ``min_channels``/``min_mac_saving`` rules. Other kernels (and other methods) keep ``method``.
    """
    if tuple(kernel) == (1, 1) and method in NO_POINTWISE_FORM:
        return "channel_svd", f"1x1 conv: channel SVD (factorize.method={method} has no 1x1 form)"
    return method, ""


def out_of_reach_macs(rows: Iterable[LayerReport | dict[str, Any]]) -> dict[str, Any]:
    """MACs in layers low rank cannot touch (depthwise/grouped convs), and their share of all conv/linear MACs.

    The share caps what factorization can achieve: with a fraction ``f`` out of reach, MACs fall at most ``1/f``x.

    Returns:
        ``{"macs_out_of_reach", "out_of_reach_mac_share", "layers_out_of_reach"}``.
    """
    total = blocked = layers = 0
    for r in rows:
        d = r if isinstance(r, dict) else r.__dict__
        total += int(d["macs_before"])
        if d["status"] != "factorized" and str(d["reason"]).startswith(OUT_OF_REACH):
            blocked += int(d["macs_before"])
            layers += 1
    return {"macs_out_of_reach": blocked, "out_of_reach_mac_share": blocked / total if total else 0.0,
            "layers_out_of_reach": layers}
