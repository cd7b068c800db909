"""Short internal tensor names for a shipped ONNX model (the graph's interface and its compute nodes keep theirs).

ONNX Runtime's quantizer names every tensor after its source (``onnx::Conv_247_quantized_scale``,
``features.3.0.conv1.0.weight_scale``) and every QuantizeLinear/DequantizeLinear node after its tensor. On a small
network these strings are a large part of what is shipped: in resnet20's int8 graph they are three quarters of the
graph's bytes before compression, about a third after it, and the container's header repeats every initializer's
name. Internal names carry no meaning for ONNX Runtime, so :func:`compact_names` renames every initializer and
intermediate value to ``t<base-36 counter>`` (in first-use order, so the result is deterministic) and drops the
Q/DQ nodes' names. What a user or app refers to stays: graph input and output names, compute-node names (the
report's per-layer tables and ORT's profiles name those) and metadata.

Graphs with subgraphs (If, Loop, Scan) are left as they are: a subgraph may refer to outer values by name.
"""
from __future__ import annotations

from typing import Any

#: node types whose names are derived from their tensors' names (the quantizer's scaffolding)
SCAFFOLD_OPS = ("QuantizeLinear", "DequantizeLinear")


def _base36(i: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        i, r = divmod(i, 36)
        out = digits[r] + out
        if i == 0:
            return out


def has_subgraphs(model: Any) -> bool:
    """Whether any node carries a graph attribute (control flow)."""
    return any(a.type in (5, 10) for n in model.graph.node for a in n.attribute)  # GRAPH, GRAPHS


def compact_names(model: Any) -> dict[str, int]:
    """Rename ``model``'s internal tensors (in place) as the module docstring says.

    Returns:
        ``{"renamed": tensors renamed, "nodes_unnamed": Q/DQ node names dropped, "skipped": 1 when the graph has
        subgraphs and was left alone, else 0}``.
    """
    g = model.graph
    if has_subgraphs(model):
        return {"renamed": 0, "nodes_unnamed": 0, "skipped": 1}
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    used = set(keep)
    new: dict[str, str] = {}
    counter = [0]

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in new:
            while True:
                cand = "t" + _base36(counter[0])
                counter[0] += 1
                if cand not in used:  # never collide with a kept interface name
                    break
            used.add(cand)
            new[name] = cand
        return new[name]

    for node in g.node:  # first-use order: inputs then outputs, node by node
        for i, n in enumerate(node.input):
            node.input[i] = short(n)
        for i, n in enumerate(node.output):
            node.output[i] = short(n)
    for t in g.initializer:
        t.name = short(t.name)
    for t in g.sparse_initializer:
        t.values.name = short(t.values.name)
    for v in g.value_info:
        v.name = short(v.name)
    unnamed = 0
    for node in g.node:
        if node.op_type in SCAFFOLD_OPS and node.name:
            node.name = ""
            unnamed += 1
    return {"renamed": len(new), "nodes_unnamed": unnamed, "skipped": 0}
