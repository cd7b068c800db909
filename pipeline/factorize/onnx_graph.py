"""Factorize convolutions directly on an ONNX graph: the path for models the torch importer cannot convert.

Each eligible ``Conv`` node is replaced by the chain of plain ``Conv`` nodes of its format, written by the format
object itself (:meth:`pipeline.factorize.formats.base.Format.to_onnx_nodes`) from the factors the same format's
``decompose`` computes on the torch path; the kernel crosses from numpy to torch (and the factors back) at this
module's boundary. ``tucker2``, ``channel_svd``, ``spatial_svd`` and ``cp`` are written; ``auto`` needs the torch
model's cost model and falls back to Tucker-2, with the reason in the per-layer table. The chain computes the same
function as the node at full rank (the spatial part keeps the node's strides, pads, auto_pad and dilations; the
separable formats split them per axis); the bias stays on the last node. Only standard ``Conv`` nodes are added, so
the graph stays a plain ONNX graph that ORT, its quantizer and the mobile converter all take.

What each Conv becomes is planned by :mod:`pipeline.factorize.graph_plan` (the torch path's rules); this module
writes the plans into the graph (:func:`build_graph`). ``break_even`` (per-layer latency measurement) and
``factorize.sequential`` are torch-path features. ``factorize.objective=outputs`` calibrates through ONNX Runtime
(:func:`pipeline.factorize.activations.collect_stats_onnx`). Ranks chosen by a threshold alone can break a graph
that cannot be finetuned afterwards: :mod:`pipeline.factorize.graph_fallback` checks the whole graph's output
fidelity and raises the rank of the most damaging layers until it holds.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import torch

from pipeline.config import FactorizeConfig
from pipeline.factorize.formats import FORMATS
from pipeline.factorize.graph_plan import GraphPlanner, LayerPlan
from pipeline.factorize.plan import LayerReport

__all__ = ["GRAPH_FORMATS", "build_graph", "decompose", "factorize_graph", "reconstruct"]

#: formats the graph rewrite implements (every conv format; ``auto`` falls back to Tucker-2)
GRAPH_FORMATS = ("tucker2", "channel_svd", "spatial_svd", "cp")


# ----------------------------------------------------------------------------------------------- numpy boundary
def decompose(fmt: str, w: np.ndarray, ranks: tuple[int, ...], **opts: Any) -> dict[str, np.ndarray]:
    """The format's factors (float64 numpy) of the ``(n, c, kh, kw)`` kernel ``w``: the torch format's maths."""
    factors = FORMATS.get(fmt).decompose(_torch(w), tuple(ranks), **opts)
    return {k: v.detach().numpy() for k, v in factors.items()}


def reconstruct(fmt: str, factors: dict[str, np.ndarray]) -> np.ndarray:
    """The dense kernel (float64 numpy) the factors represent."""
    return FORMATS.get(fmt).reconstruct({k: _torch(v) for k, v in factors.items()}).numpy()


def _torch(a: np.ndarray) -> torch.Tensor:
    """A torch tensor owning a copy of ``a`` (initializer arrays may be read-only views)."""
    return torch.from_numpy(np.array(a, copy=True))


# ----------------------------------------------------------------------------------------------- the rewrite
def build_graph(model: Any, plans: Sequence[LayerPlan], check: bool = True) -> Any:
    """A copy of ``model`` (the planner's graph) with every factorized plan's Conv replaced by its node chain.

    The replaced kernels are dropped (not shipped twice), stale ``value_info`` entries removed, and the result
    checked by ``onnx.checker`` (``check=False`` skips that for the fallback's intermediate graphs).
    """
    new = onnx.ModelProto()
    new.CopyFrom(model)
    replacements = {p.conv.index: p.nodes for p in plans if p.factorized}
    if not replacements:
        return new
    old = list(new.graph.node)
    del new.graph.node[:]
    for i, node in enumerate(old):
        new.graph.node.extend(replacements.get(i, [node]))  # graph order stays topological
    for p in plans:
        if p.factorized:
            new.graph.initializer.extend(p.inits)
    used = {v for node in new.graph.node for v in node.input} | {o.name for o in new.graph.output}
    keep = [t for t in new.graph.initializer if t.name in used]
    del new.graph.initializer[:]
    new.graph.initializer.extend(keep)
    # Old value_info entries may name values that no longer exist; shape inference rebuilds what is needed.
    live = {v for node in new.graph.node for v in node.output}
    vi = [v for v in new.graph.value_info if v.name in live]
    del new.graph.value_info[:]
    new.graph.value_info.extend(vi)
    if check:
        onnx.checker.check_model(new, full_check=True)
    return new


def factorize_graph(model: Any, cfg: FactorizeConfig, input_shape: tuple[int, int, int],
                    calib_images: np.ndarray | None = None) -> tuple[Any, list[LayerReport], dict[str, dict[str, Any]]]:
    """Factorize the Conv nodes of an ONNX ``ModelProto`` as ``cfg`` says (the input is not modified).

    Per Conv node: dense with the reason, or the format, ranks from the selector aligned to ``cfg.align``, and the
    Conv chain (:meth:`pipeline.factorize.graph_plan.GraphPlanner.plan`). No fidelity check: see
    :func:`pipeline.factorize.graph_fallback.factorize_graph_checked`.

    Args:
        model: the graph (standard-domain operators; ORT must run it).
        cfg: the factorize config.
        input_shape: ``(C, H, W)`` of one sample (gives each conv's input and output size for the MAC counts).
        calib_images: calibration inputs (N, C, H, W) float32, needed by ``cfg.objective=outputs``.

    Returns:
        ``(new_model, per-layer reports, structure)``; structure maps node name -> ``{"format", "ranks"}``.

    Raises:
        NumericalError: NaN/Inf in a kernel or in its decomposition (the node is named).
        InputError: ORT cannot run the graph at ``input_shape``.
    """
    planner = GraphPlanner(model, cfg, input_shape, calib_images)
    plans = planner.plan_all(cfg)
    new = build_graph(planner.model, plans)
    return new, [p.row for p in plans], {p.conv.name: p.structure for p in plans if p.factorized}
