"""Factorize convolutions directly on an ONNX graph: the fallback for models the torch importer cannot convert.

Each eligible ``Conv`` node is replaced by a chain of plain ``Conv`` nodes computed from its weight initializer
with numpy (float64):

* ``tucker2`` (Kim et al. 2016, HOSVD + optional HOOI): 1x1 (c->r1) -> kxk (r1->r2) -> 1x1 (r2->n);
* ``channel_svd``: kxk (c->r) -> 1x1 (r->n), sqrt(s) folded into both factors.

The spatial conv of the chain keeps *every* attribute of the original node (strides, pads, auto_pad, dilations), and
the 1x1 convs around it change no geometry, so the chain computes exactly the same function at full rank; the bias
stays on the last node. Only standard ``Conv`` nodes are added, so the graph stays a plain ONNX graph that ORT, its
quantizer and the mobile converter all take. The other formats (spatial SVD, CP, ``auto``) need the torch modules
and fall back to Tucker-2, with the reason in the per-layer table. Ranks come from the configured selector
(``energy``, ``erank``, ``vbmf``, ``fixed``; ``budget`` needs the torch model and uses ``energy``) and are aligned
to ``factorize.align`` like the torch path; the dense-keeping rules (``skip_first``, ``min_channels``,
``min_mac_saving``) are the same. ``break_even`` (per-layer latency measurement) is a torch-path feature.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import FactorizeConfig
from pipeline.errors import InputError, NumericalError
from pipeline.factorize.ranks import SELECTORS, RankContext, align_rank
from pipeline.factorize.swap import LayerReport

__all__ = ["GRAPH_FORMATS", "decompose", "factorize_graph", "reconstruct"]

#: formats the graph rewrite implements
GRAPH_FORMATS = ("tucker2", "channel_svd")
_STANDARD = ("", "ai.onnx")


# ----------------------------------------------------------------------------------------------- the math (numpy)
def _leading(mat: np.ndarray, r: int) -> np.ndarray:
    """The ``r`` leading left singular vectors of ``mat`` (rows x r, orthonormal)."""
    u, _, _ = np.linalg.svd(mat, full_matrices=False)
    return u[:, :r]


def _mode0(w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[0], -1)


def _mode1(w: np.ndarray) -> np.ndarray:
    return w.transpose(1, 0, 2, 3).reshape(w.shape[1], -1)


def matrices(fmt: str, w: np.ndarray) -> list[np.ndarray]:
    """The matricisations whose spectra decide each rank (same order as the ranks)."""
    return [_mode1(w), _mode0(w)] if fmt == "tucker2" else [_mode0(w)]


def max_ranks(fmt: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Largest meaningful rank per rank dimension of a ``(n, c, kh, kw)`` kernel."""
    n, c, kh, kw = shape
    return (c, n) if fmt == "tucker2" else (min(n, c * kh * kw),)


def decompose(fmt: str, w: np.ndarray, ranks: tuple[int, ...], hooi_iters: int = 0) -> dict[str, np.ndarray]:
    """Factors (float64) of the ``(n, c, kh, kw)`` kernel ``w`` at ``ranks``, as Conv weights of the chain.

    Returns:
        tucker2: ``{"first": (r1, c, 1, 1), "core": (r2, r1, kh, kw), "last": (n, r2, 1, 1)}``;
        channel_svd: ``{"first": (r, c, kh, kw), "last": (n, r, 1, 1)}``.
    """
    w = np.asarray(w, dtype=np.float64)
    n, c, kh, kw = w.shape
    if fmt == "tucker2":
        r1, r2 = ranks
        u_in = _leading(_mode1(w), r1)     # (c, r1)
        u_out = _leading(_mode0(w), r2)    # (n, r2)
        for _ in range(int(hooi_iters)):
            # HOOI: each subspace re-fit to the kernel projected on the other one (as the torch format does).
            u_in = _leading(_mode1(np.einsum("oihw,or->rihw", w, u_out)), r1)
            u_out = _leading(_mode0(np.einsum("oihw,is->oshw", w, u_in)), r2)
        core = np.einsum("oihw,or,is->rshw", w, u_out, u_in)  # (r2, r1, kh, kw)
        return {"first": np.ascontiguousarray(u_in.T)[:, :, None, None], "core": np.ascontiguousarray(core),
                "last": np.ascontiguousarray(u_out)[:, :, None, None]}
    if fmt == "channel_svd":
        (r,) = ranks
        u, s, vt = np.linalg.svd(_mode0(w), full_matrices=False)
        # sqrt(s) on both sides keeps the dynamic range of each factor small (it matters once they are quantized).
        sq = np.sqrt(s[:r])
        return {"first": (sq[:, None] * vt[:r]).reshape(r, c, kh, kw),
                "last": np.ascontiguousarray(u[:, :r] * sq[None, :])[:, :, None, None]}
    raise ValueError(f"graph factorization implements {', '.join(GRAPH_FORMATS)}, not {fmt!r}")


def reconstruct(fmt: str, factors: dict[str, np.ndarray]) -> np.ndarray:
    """The dense ``(n, c, kh, kw)`` kernel the factors represent (float64)."""
    if fmt == "tucker2":
        u_in = factors["first"][:, :, 0, 0].T
        u_out = factors["last"][:, :, 0, 0]
        return np.einsum("rshw,or,is->oihw", factors["core"], u_out, u_in)
    first, last = factors["first"], factors["last"]
    r = first.shape[0]
    return (last.reshape(-1, r) @ first.reshape(r, -1)).reshape(last.shape[0], *first.shape[1:])


def _macs(fmt: str, shape: tuple[int, ...], ranks: tuple[int, ...], in_hw: tuple[int, int],
          out_hw: tuple[int, int]) -> int:
    n, c, kh, kw = shape
    hw = out_hw[0] * out_hw[1]
    if fmt == "tucker2":
        r1, r2 = ranks
        # The first 1x1 runs at input resolution (before the stride/padding of the core).
        return in_hw[0] * in_hw[1] * c * r1 + hw * (r1 * r2 * kh * kw + r2 * n)
    (r,) = ranks
    return hw * r * (c * kh * kw + n)


def _params(fmt: str, shape: tuple[int, ...], ranks: tuple[int, ...], bias: bool) -> int:
    n, c, kh, kw = shape
    extra = n if bias else 0
    if fmt == "tucker2":
        r1, r2 = ranks
        return c * r1 + r1 * r2 * kh * kw + r2 * n + extra
    (r,) = ranks
    return r * (c * kh * kw + n) + extra


# ----------------------------------------------------------------------------------------------- graph helpers
def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _probe_shapes(model: Any, names: list[str], input_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Shapes of the named values for one input of ``input_shape`` (batch 1, or the graph's fixed batch), from ORT.

    ORT, not ONNX shape inference: the fallback exists for graphs with operators the importer does not know, and
    ORT runs every graph this module sees (the baseline stage checked that), whereas shape inference may give up.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = copy.deepcopy(model)
    known = {o.name for o in m.graph.output}
    for name in names:
        if name not in known:
            m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            known.add(name)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    # No graph optimisation: fused/renamed nodes must not hide the values we ask for.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dim0 = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 1
    outs = sess.run(names, {inp.name: np.zeros((dim0, *input_shape), np.float32)})
    return {n: tuple(int(d) for d in o.shape) for n, o in zip(names, outs)}


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


@dataclass
class _Conv:
    """One Conv node the planner looks at."""

    index: int
    node: Any
    name: str
    weight: np.ndarray | None
    has_bias: bool
    attrs: dict[str, Any]


def _find_convs(model: Any) -> list[_Conv]:
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    out: list[_Conv] = []
    for i, node in enumerate(graph.node):
        if node.op_type != "Conv" or node.domain not in _STANDARD:
            continue
        wname = node.input[1]
        # An initializer that is also a graph input can be overridden at run time: it is not a constant.
        w = numpy_helper.to_array(inits[wname]) if wname in inits and wname not in graph_inputs else None
        out.append(_Conv(i, node, node.name or f"Conv_{i}", w, len(node.input) > 2 and bool(node.input[2]),
                         _attrs(node)))
    return out


def _format_for(method: str, kernel: tuple[int, int]) -> tuple[str, str]:
    """(format, note) for the configured method: the graph rewrite implements Tucker-2 and channel SVD."""
    if kernel == (1, 1):
        # Tucker-2 of a 1x1 conv adds two 1x1 convs around a 1x1 core; the SVD of the channel matrix is the form.
        note = "" if method == "channel_svd" else "1x1 conv: channel SVD (Tucker-2 would wrap a 1x1 core in two 1x1s)"
        return "channel_svd", note
    if method in GRAPH_FORMATS:
        return method, ""
    return "tucker2", (f"graph-level fallback implements {' and '.join(GRAPH_FORMATS)} only: factorize.method="
                       f"{method} needs the torch model, Tucker-2 used")


def _ranks(fmt: str, w: np.ndarray, cfg: FactorizeConfig) -> tuple[tuple[int, ...], str]:
    mats = matrices(fmt, w)
    limits = max_ranks(fmt, w.shape)
    selector, note = cfg.selector, ""
    if selector == "budget":
        selector, note = "energy", "selector=budget needs the torch model: energy selector used"
    ctx = RankContext(spectra=[np.linalg.svd(m, compute_uv=False) for m in mats],
                      shapes=[tuple(m.shape) for m in mats], max_ranks=limits, cfg=cfg)
    raw = SELECTORS.get(selector)(ctx)
    ranks = tuple(align_rank(r, cfg.align, m) for r, m in zip(raw, limits))
    if any(r > m for r, m in zip(raw, limits)):
        note = "; ".join(x for x in (note, f"ranks {list(raw)} clamped to the layer's maximum {list(limits)}") if x)
    return ranks, note


def _chain_nodes(c: _Conv, fmt: str, factors: dict[str, np.ndarray], dtype: np.dtype,
                 taken: set[str]) -> tuple[list[Any], list[Any]]:
    """The Conv nodes (and their weight initializers) that replace ``c``; the last one writes ``c``'s output."""
    from onnx import helper, numpy_helper

    node = c.node
    keys = ["first", "core", "last"] if fmt == "tucker2" else ["first", "last"]
    spatial = "core" if fmt == "tucker2" else "first"
    nodes, inits = [], []
    x = node.input[0]
    for j, key in enumerate(keys):
        wname = _unique(f"{c.name}.{j}.weight", taken)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(factors[key].astype(dtype)), wname))
        last = j == len(keys) - 1
        out = node.output[0] if last else _unique(f"{c.name}.{j}_out", taken)
        ins = [x, wname] + ([node.input[2]] if last and c.has_bias else [])
        if key == spatial:
            # Every attribute of the original (strides, pads, auto_pad, dilations, kernel_shape): exact geometry.
            attrs = {k: v for k, v in c.attrs.items() if k != "group"}
        else:
            attrs = {"kernel_shape": [1, 1]}
        # Names "<layer>.<i>" match the torch path's Sequential children, so reports attribute profiles the same way.
        nodes.append(helper.make_node("Conv", ins, [out], name=_unique(f"{c.name}.{j}", taken), **attrs))
        x = out
    return nodes, inits


# ----------------------------------------------------------------------------------------------- the rewrite
def factorize_graph(model: Any, cfg: FactorizeConfig,
                    input_shape: tuple[int, int, int]) -> tuple[Any, list[LayerReport], dict[str, dict[str, Any]]]:
    """Factorize the Conv nodes of an ONNX ``ModelProto`` as ``cfg`` says (the input is not modified).

    Per Conv node: dense with the reason (not a constant 2-D kernel, grouped/depthwise, first conv with
    ``skip_first``, narrower than ``min_channels``, saves less than ``min_mac_saving`` of its MACs), else the
    format (see :func:`_format_for`), ranks from the selector aligned to ``cfg.align``, and the Conv chain.

    Args:
        model: the graph (standard-domain operators; ORT must run it).
        cfg: the factorize config.
        input_shape: ``(C, H, W)`` of one sample (gives each conv's input and output size for the MAC counts).

    Returns:
        ``(new_model, per-layer reports, structure)``; structure maps node name -> ``{"format", "ranks"}``.

    Raises:
        NumericalError: NaN/Inf in a kernel or in its decomposition (the node is named).
    """
    import onnx

    new = copy.deepcopy(model)
    convs = _find_convs(new)
    names = sorted({n for c in convs for n in (c.node.input[0], c.node.output[0])} - {i.name for i in new.graph.input})
    try:
        shapes = _probe_shapes(new, names, input_shape) if names else {}
    except Exception as e:  # ORT's own exception types; the baseline stage already ran this graph once
        raise InputError(f"graph factorization: ONNX Runtime could not run the graph to size its convolutions "
                         f"({type(e).__name__}: {str(e)[:300]}); check the model's input shape "
                         f"{tuple(input_shape)}") from e
    graph_input = {i.name: (1, *input_shape) for i in new.graph.input}
    taken = {t.name for t in new.graph.initializer} | {v for n in new.graph.node for v in (*n.input, *n.output)}
    taken |= {n.name for n in new.graph.node if n.name}
    reports: list[LayerReport] = []
    structure: dict[str, dict[str, Any]] = {}
    replacements: dict[int, list[Any]] = {}
    first_conv = convs[0].index if convs else -1
    for c in convs:
        w = c.weight
        in_shape = shapes.get(c.node.input[0]) or graph_input.get(c.node.input[0])
        out_shape = shapes.get(c.node.output[0])
        shape4 = tuple(int(d) for d in w.shape) if w is not None else ()
        in_hw = tuple(in_shape[2:4]) if in_shape and len(in_shape) == 4 else (1, 1)
        out_hw = tuple(out_shape[2:4]) if out_shape and len(out_shape) == 4 else (1, 1)
        group = int(c.attrs.get("group", 1))
        macs0 = (int(np.prod(shape4)) * out_hw[0] * out_hw[1]) if len(shape4) == 4 else 0
        params0 = (int(w.size) + (shape4[0] if c.has_bias else 0)) if w is not None else 0
        row = LayerReport(name=c.name, kind="Conv (ONNX)", shape=list(shape4),
                          stride=list(c.attrs.get("strides", [1, 1])), format=None, ranks=None,
                          macs_before=macs0, macs_after=macs0, params_before=params0, params_after=params0,
                          rel_error=None, status="dense", reason="")
        reports.append(row)
        if w is None:
            row.reason = "weight is not a constant initializer: kept dense"
            continue
        if w.ndim != 4:
            row.reason = f"not a 2-D convolution (kernel of rank {w.ndim}): kept dense"
            continue
        if not np.isfinite(w).all():
            raise NumericalError(f"Conv node {c.name!r}: its weight contains NaN/Inf; fix or re-export the model")
        n, cg, kh, kw = shape4
        if group > 1:
            row.reason = ("depthwise conv: nothing to factorize" if cg == 1
                          else f"grouped conv (group={group}): not factorized")
            continue
        if cfg.skip_first and c.index == first_conv:
            row.reason = "first conv sees raw pixels (few input channels): kept dense (factorize.skip_first)"
            continue
        if min(n, cg) < cfg.min_channels:
            row.reason = (f"narrow layer ({cg}->{n} channels < min_channels {cfg.min_channels}): overhead-bound, "
                          f"kept dense")
            continue
        if out_shape is None:
            row.reason = "output size unknown (ONNX Runtime did not report it): kept dense"
            continue
        fmt, fmt_note = _format_for(cfg.method, (kh, kw))
        ranks, rank_note = _ranks(fmt, w, cfg)
        macs1 = _macs(fmt, shape4, ranks, in_hw, out_hw)
        if macs1 > (1 - cfg.min_mac_saving) * macs0:
            row.reason = "; ".join(x for x in (fmt_note, f"{fmt} at ranks {list(ranks)} would not save MACs "
                                                         f"({macs1:,} vs {macs0:,})") if x)
            continue
        factors = decompose(fmt, w, ranks, hooi_iters=cfg.hooi_iters if fmt == "tucker2" else 0)
        w64 = w.astype(np.float64)
        err = float(np.linalg.norm(w64 - reconstruct(fmt, factors)) / max(np.linalg.norm(w64), 1e-30))
        if not np.isfinite(err):
            raise NumericalError(f"Conv node {c.name!r}: {fmt} decomposition produced NaN/Inf")
        nodes, inits = _chain_nodes(c, fmt, factors, w.dtype, taken)
        replacements[c.index] = nodes
        new.graph.initializer.extend(inits)
        row.format, row.ranks, row.status = fmt, list(ranks), "factorized"
        row.reason = "; ".join(x for x in (fmt_note, rank_note) if x)
        row.macs_after, row.params_after, row.rel_error = macs1, _params(fmt, shape4, ranks, c.has_bias), err
        structure[c.name] = {"format": fmt, "ranks": list(ranks)}
    if replacements:
        old = list(new.graph.node)
        del new.graph.node[:]
        for i, node in enumerate(old):
            new.graph.node.extend(replacements.get(i, [node]))  # graph order stays topological
        used = {v for node in new.graph.node for v in node.input} | {o.name for o in new.graph.output}
        keep = [t for t in new.graph.initializer if t.name in used]
        del new.graph.initializer[:]
        new.graph.initializer.extend(keep)  # the replaced kernels are gone, not shipped twice
        # Old value_info entries may name values that no longer exist; shape inference rebuilds what is needed.
        live = {v for node in new.graph.node for v in node.output}
        vi = [v for v in new.graph.value_info if v.name in live]
        del new.graph.value_info[:]
        new.graph.value_info.extend(vi)
        onnx.checker.check_model(new, full_check=True)
    return new, reports, structure
