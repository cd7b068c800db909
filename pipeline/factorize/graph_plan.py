"""Planning the graph path: which Conv nodes of an ONNX graph take which low-rank form at which ranks.

:class:`GraphPlanner` reads a graph once (its Conv nodes, their measured input/output sizes, and, for
``factorize.objective=outputs``, the calibration statistics) and then plans any Conv under any factorize config
(:meth:`GraphPlanner.plan`): the fidelity fallback (:mod:`pipeline.factorize.graph_fallback`) re-plans single layers
at higher energies without reading the graph again. :mod:`pipeline.factorize.onnx_graph` writes the planned node
chains into the graph.

The planning rules are the torch path's: 1x1 convs take the channel SVD under formats without a 1x1 form
(:func:`pipeline.factorize.plan.pointwise_format`), ranks come from the configured per-layer selector
(:func:`pipeline.factorize.ranks.select_ranks`; a model-scope selector such as ``budget`` needs the torch model and
uses ``energy``) aligned to ``factorize.align``, and ``skip_first``, ``min_channels`` and ``min_mac_saving`` keep
layers dense the same way.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from pipeline.config import FactorizeConfig
from pipeline.errors import InputError, NumericalError
from pipeline.factorize.activations import collect_stats_onnx
from pipeline.factorize.data_aware import check_config
from pipeline.factorize.formats import FORMATS
from pipeline.factorize.formats.base import gram_spectrum
from pipeline.factorize.formats.onnx_nodes import unique_namer
from pipeline.factorize.plan import LayerReport, pointwise_format
from pipeline.factorize.ranks import model_selector, select_ranks
from pipeline.ort_session import make_session

__all__ = ["ConvNode", "GraphPlanner", "LayerPlan", "find_convs"]

_STANDARD = ("", "ai.onnx")


def _torch(a: np.ndarray) -> torch.Tensor:
    """A torch tensor owning a copy of ``a`` (initializer arrays may be read-only views)."""
    return torch.from_numpy(np.array(a, copy=True))


def _attrs(node: Any) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class ConvNode:
    """One Conv node the planner looks at (``index``: its position in ``graph.node``)."""

    index: int
    node: Any
    name: str
    weight: np.ndarray | None
    has_bias: bool
    attrs: dict[str, Any]


@dataclass
class LayerPlan:
    """One Conv's decision: its report row and, when factorized, the node chain and initializers replacing it."""

    conv: ConvNode
    row: LayerReport
    nodes: list[Any] = field(default_factory=list)
    inits: list[Any] = field(default_factory=list)

    @property
    def factorized(self) -> bool:
        return self.row.status == "factorized"

    @property
    def structure(self) -> dict[str, Any]:
        return {"format": self.row.format, "ranks": list(self.row.ranks or [])}


def find_convs(model: Any) -> list[ConvNode]:
    """The standard-domain Conv nodes of ``model`` in graph order (weight None unless a constant initializer)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    out: list[ConvNode] = []
    for i, node in enumerate(graph.node):
        if node.op_type != "Conv" or node.domain not in _STANDARD:
            continue
        wname = node.input[1]
        # An initializer that is also a graph input can be overridden at run time: it is not a constant.
        w = numpy_helper.to_array(inits[wname]) if wname in inits and wname not in graph_inputs else None
        out.append(ConvNode(i, node, node.name or f"Conv_{i}", w, len(node.input) > 2 and bool(node.input[2]),
                            _attrs(node)))
    return out


def _probe_shapes(model: Any, names: list[str], input_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Shapes of the named values for one input of ``input_shape`` (batch 1, or the graph's fixed batch), from ORT.

    ORT, not ONNX shape inference: the graph path exists for graphs with operators the importer does not know, and
    ORT runs every graph this module sees (the baseline stage checked that), whereas shape inference may give up.
    """
    m = copy.deepcopy(model)
    known = {o.name for o in m.graph.output}
    for name in names:
        if name not in known:
            m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            known.add(name)
    # No graph optimisation: fused/renamed nodes must not hide the values we ask for.
    sess = make_session(m.SerializeToString(), threads=1, opt_level="disabled")
    inp = sess.get_inputs()[0]
    dim0 = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 1
    outs = sess.run(names, {inp.name: np.zeros((dim0, *input_shape), np.float32)})
    return {n: tuple(int(d) for d in o.shape) for n, o in zip(names, outs)}


def format_for(method: str, kernel: tuple[int, int]) -> tuple[str, str]:
    """(format, note) for the configured method: the 1x1 rule of both paths, ``auto`` falls back to Tucker-2."""
    if method == "auto":
        if tuple(kernel) == (1, 1):
            return "channel_svd", "1x1 conv: channel SVD (method=auto on the graph path)"
        return "tucker2", ("graph-level fallback has no cost model for factorize.method=auto (it needs the torch "
                           "model): Tucker-2 used")
    return pointwise_format(method, kernel)


def _geometry(w: np.ndarray, attrs: dict[str, Any], has_bias: bool) -> nn.Conv2d:
    """A weightless (meta-device) ``nn.Conv2d`` of the node's shape, stride and dilation, for the format's checks,
    rank limits and MAC/parameter counts (the node's padding is not needed: its input size is measured)."""
    n, c, kh, kw = (int(d) for d in w.shape)
    return nn.Conv2d(c, n, (kh, kw), stride=tuple(attrs.get("strides", [1, 1])),
                     dilation=tuple(attrs.get("dilations", [1, 1])), bias=has_bias, device="meta")


def _calibration(model: Any, convs: list[ConvNode], cfg: FactorizeConfig, images: np.ndarray) -> dict[str, Any]:
    """Statistics (ORT) of every Conv node the configured format could take; a few may later stay dense."""
    kinds: dict[str, tuple[str, ...]] = {}
    for c in convs:
        if c.weight is None or c.weight.ndim != 4 or int(c.attrs.get("group", 1)) > 1:
            continue
        fmt = FORMATS.get(format_for(cfg.method, tuple(c.weight.shape[2:]))[0])
        if fmt.check(_geometry(c.weight, c.attrs, c.has_bias)) is None:
            kinds[c.name] = fmt.stat_kinds
    if not kinds:
        return {}
    return collect_stats_onnx(model, kinds, images, max_images=cfg.calib_images, positions=cfg.calib_positions,
                              eps=cfg.whiten_eps)


class GraphPlanner:
    """The Conv nodes of one graph, measured once, planned under any factorize config.

    Args:
        model: the graph (standard-domain operators; ORT must run it). It is copied; unnamed Conv nodes of the copy
            (:attr:`model`) take the planner's names, which key the statistics and the plans.
        cfg: the factorize config (its method and objective fix the calibration statistics).
        input_shape: ``(C, H, W)`` of one sample (each conv's input and output size for the MAC counts).
        calib_images: calibration inputs (N, C, H, W) float32, needed by ``cfg.objective=outputs``.

    Raises:
        InputError: ORT cannot run the graph at ``input_shape``.
    """

    def __init__(self, model: Any, cfg: FactorizeConfig, input_shape: tuple[int, int, int],
                 calib_images: np.ndarray | None = None) -> None:
        data_aware = check_config(cfg, calib_images)
        self.model = copy.deepcopy(model)
        self.convs = find_convs(self.model)
        for c in self.convs:
            if not c.node.name:
                c.node.name = c.name
        self.stats: dict[str, Any] = _calibration(self.model, self.convs, cfg, calib_images) if data_aware else {}
        graph_inputs = {i.name for i in self.model.graph.input}
        names = sorted({n for c in self.convs for n in (c.node.input[0], c.node.output[0])} - graph_inputs)
        try:
            self.shapes = _probe_shapes(self.model, names, input_shape) if names else {}
        except Exception as e:  # ORT's own exception types; the baseline stage already ran this graph once
            raise InputError(f"graph factorization: ONNX Runtime could not run the graph to size its convolutions "
                             f"({type(e).__name__}: {str(e)[:300]}); check the model's input shape "
                             f"{tuple(input_shape)}") from e
        self.shapes.update({n: (1, *input_shape) for n in graph_inputs})
        g = self.model.graph
        taken = {t.name for t in g.initializer} | {v for n in g.node for v in (*n.input, *n.output)}
        taken |= {n.name for n in g.node if n.name}
        self.unique = unique_namer(taken)
        self.first_conv = self.convs[0].index if self.convs else -1

    def plan_all(self, cfg: FactorizeConfig) -> list[LayerPlan]:
        """Every Conv planned under ``cfg``, in graph order."""
        return [self.plan(c, cfg) for c in self.convs]

    def plan(self, c: ConvNode, cfg: FactorizeConfig, y: str | None = None) -> LayerPlan:
        """``c`` under ``cfg``: dense with the reason (not a constant 2-D kernel, grouped/depthwise, first conv with
        ``skip_first``, narrower than ``min_channels``, saves less than ``min_mac_saving`` of its MACs), else the
        format (see :func:`format_for`), ranks from the selector aligned to ``cfg.align``, and the Conv chain
        writing ``y`` (default: the node's own output).

        Raises:
            NumericalError: NaN/Inf in the kernel or in its decomposition (the node is named).
        """
        w = c.weight
        in_shape, out_shape = self.shapes.get(c.node.input[0]), self.shapes.get(c.node.output[0])
        shape4 = tuple(int(d) for d in w.shape) if w is not None else ()
        known_in = in_shape is not None and len(in_shape) == 4
        in_hw = tuple(in_shape[2:4]) if known_in else (1, 1)
        out_hw = tuple(out_shape[2:4]) if out_shape and len(out_shape) == 4 else (1, 1)
        group = int(c.attrs.get("group", 1))
        macs0 = (int(np.prod(shape4)) * out_hw[0] * out_hw[1]) if len(shape4) == 4 else 0
        params0 = (int(w.size) + (shape4[0] if c.has_bias else 0)) if w is not None else 0
        row = LayerReport(name=c.name, kind="Conv (ONNX)", shape=list(shape4),
                          stride=list(c.attrs.get("strides", [1, 1])), format=None, ranks=None,
                          macs_before=macs0, macs_after=macs0, params_before=params0, params_after=params0,
                          rel_error=None, status="dense", reason="")
        plan = LayerPlan(c, row)
        if w is None:
            row.reason = ("weight is not a constant initializer: kept dense (a weight computed at run time cannot be "
                          "factorized; weights in Constant nodes are folded on load)")
            return plan
        if w.ndim != 4:
            row.reason = f"not a 2-D convolution (kernel of rank {w.ndim}): kept dense"
            return plan
        if not np.isfinite(w).all():
            raise NumericalError(f"Conv node {c.name!r}: its weight contains NaN/Inf; fix or re-export the model")
        n, cg, kh, kw = shape4
        if group > 1:
            row.reason = ("depthwise conv: nothing to factorize" if cg == 1
                          else f"grouped conv (group={group}): not factorized")
            return plan
        if cfg.skip_first and c.index == self.first_conv:
            row.reason = "first conv sees raw pixels (few input channels): kept dense (factorize.skip_first)"
            return plan
        if min(n, cg) < cfg.min_channels:
            row.reason = (f"narrow layer ({cg}->{n} channels < min_channels {cfg.min_channels}): overhead-bound, "
                          f"kept dense")
            return plan
        if out_shape is None:
            row.reason = "output size unknown (ONNX Runtime did not report it): kept dense"
            return plan
        selector, scope_note = cfg.selector, ""
        if model_selector(selector) is not None:
            selector, scope_note = "energy", f"selector={cfg.selector} needs the torch model: energy selector used"
        fname, fmt_note = format_for(cfg.method, (kh, kw))
        fmt, layer = FORMATS.get(fname), _geometry(w, c.attrs, c.has_bias)
        why = fmt.check(layer)
        if why:
            row.reason = "; ".join(x for x in (fmt_note, f"{why}: kept dense") if x)
            return plan
        wt = _torch(w)
        mats = fmt.matrices(wt)
        st = self.stats.get(c.name)
        spectra = fmt.data_spectra(wt, st.centred()) if st is not None else [gram_spectrum(m) for m in mats]
        ranks, rank_note = select_ranks(spectra, [tuple(m.shape) for m in mats], fmt.max_ranks(layer), cfg, selector)
        rank_note = "; ".join(x for x in (scope_note, rank_note) if x)
        macs1 = fmt.macs(layer, ranks, out_hw, in_hw=in_hw if known_in else None)
        if macs1 > (1 - cfg.min_mac_saving) * macs0:
            row.reason = "; ".join(x for x in (fmt_note, f"{fname} at ranks {list(ranks)} would not save MACs "
                                                         f"({macs1:,} vs {macs0:,})") if x)
            return plan
        factors = fmt.decompose(wt, ranks, stats=st, hooi_iters=cfg.hooi_iters, cp_max_iters=cfg.cp_max_iters,
                                cp_time_limit_s=cfg.cp_time_limit_s)
        w64 = wt.to(torch.float64)
        approx = fmt.reconstruct(factors).reshape(w64.shape)
        err = float((w64 - approx).norm() / w64.norm().clamp_min(1e-30))
        if st is not None:
            rank_note = "; ".join(x for x in (rank_note, f"output error {fmt.output_error(wt, approx, st):.4f} "
                                                         "on calibration data") if x)
        if not np.isfinite(err):
            raise NumericalError(f"Conv node {c.name!r}: {fname} decomposition produced NaN/Inf")
        try:
            nodes, inits = fmt.to_onnx_nodes(factors, x=c.node.input[0], y=y or c.node.output[0], name=c.name,
                                             bias=c.node.input[2] if c.has_bias else None, attrs=c.attrs,
                                             dtype=w.dtype, unique=self.unique, in_hw=in_hw if known_in else None)
        except ValueError as e:  # auto_pad SAME_* of a separable format without a measured input size
            row.reason = f"{fname}: {e}: kept dense"
            return plan
        plan.nodes, plan.inits = nodes, inits
        row.format, row.ranks, row.status = fname, list(ranks), "factorized"
        row.reason = "; ".join(x for x in (fmt_note, rank_note) if x)
        row.macs_after, row.params_after, row.rel_error = macs1, fmt.params(layer, ranks), err
        return plan

    def replan(self, plan: LayerPlan, cfg: FactorizeConfig, y: str | None = None) -> LayerPlan:
        """The same Conv planned again under ``cfg`` (a copy; ``plan`` is not changed)."""
        return self.plan(plan.conv, cfg, y=y)


def dense_plan(plan: LayerPlan, reason: str) -> LayerPlan:
    """``plan``'s Conv kept dense with ``reason`` (its MACs and parameters unchanged)."""
    row = dataclasses.replace(plan.row, format=None, ranks=None, macs_after=plan.row.macs_before,
                              params_after=plan.row.params_before, rel_error=None, status="dense", reason=reason)
    return LayerPlan(plan.conv, row)
