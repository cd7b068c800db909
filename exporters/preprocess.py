"""``export.bake_preprocessing``: put the dataset normalisation ``(x - mean) / std`` inside the graph.

The baked graph takes raw ``[0, 1]`` pixels. It is the original graph with ``x * (1/std) + (-mean/std)`` (one Mul,
one Add, per-channel constants of shape ``(1, C, 1, 1)``) in front of it.

Why not fold the normalisation into the first Conv's weights and bias: that is exact only without zero padding.
A padded Conv sees zeros at the borders; after folding, those zeros stand for raw pixel 0 instead of normalised 0,
i.e. the border taps get ``-mean/std`` added where the original saw 0, and the outputs near the borders change.
Two elementwise ops cost next to nothing and are exact up to float rounding (``x/s - m/s`` vs ``(x - m)/s``, a
few ulps), and every mobile EP supports Mul and Add, so this module never folds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.artifacts import atomic_write_bytes
from pipeline.errors import InputError, ValidationError

BAKED_NODE_PREFIX = "lowrank_preprocess"


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 0
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


def _rename_uses(graph: Any, old: str, new: str) -> None:
    """Point every consumer of ``old`` (in this graph and in subgraphs that capture it) at ``new``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                if not any(v.name == old for v in sub.input):  # a subgraph input of that name shadows ours
                    _rename_uses(sub, old, new)
    for out in graph.output:
        if out.name == old:  # the input passed straight through: keep the output name, feed it the normalised value
            raise ValidationError("bake_preprocessing: the graph returns its input unchanged; nothing to bake into")


def bake_proto(proto: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Prepend ``x * (1/std) + (-mean/std)`` to the graph's single image input, in place. Returns ``proto``.

    The graph input keeps its name, shape and dtype (float32), so an app only changes what it feeds.

    Raises:
        ValidationError: not exactly one float32 NCHW input, a channel count that does not match ``mean``/``std``,
            a zero std, or a graph that was already baked.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise ValidationError(f"bake_preprocessing: the graph needs exactly one image input, found "
                              f"{[i.name for i in inputs]}")
    if any(n.name.startswith(BAKED_NODE_PREFIX) for n in graph.node):
        raise ValidationError("bake_preprocessing: the graph already holds baked preprocessing; bake it once")
    inp = inputs[0]
    tt = inp.type.tensor_type
    if tt.elem_type != TensorProto.FLOAT or len(tt.shape.dim) != 4:
        raise ValidationError(f"bake_preprocessing: input {inp.name!r} must be a float32 NCHW tensor")
    c = len(mean)
    dim_c = tt.shape.dim[1]
    if len(std) != c or (dim_c.HasField("dim_value") and dim_c.dim_value != c):
        raise ValidationError(f"bake_preprocessing: mean/std have {len(mean)}/{len(std)} values but the input has "
                              f"{dim_c.dim_value or '?'} channels; pass one value per channel")
    s = np.asarray(std, dtype=np.float64)
    if np.any(s == 0) or not np.all(np.isfinite(s)):
        raise ValidationError(f"bake_preprocessing: std must be finite and non-zero, got {list(std)}")
    m = np.asarray(mean, dtype=np.float64)
    scale = (1.0 / s).astype(np.float32).reshape(1, c, 1, 1)
    shift = (-m / s).astype(np.float32).reshape(1, c, 1, 1)
    taken = init_names | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    scale_name = _unique(f"{BAKED_NODE_PREFIX}_scale", taken)
    shift_name = _unique(f"{BAKED_NODE_PREFIX}_shift", taken)
    scaled = _unique(f"{BAKED_NODE_PREFIX}_scaled", taken)
    normalised = _unique(f"{BAKED_NODE_PREFIX}_normalised", taken)
    _rename_uses(graph, inp.name, normalised)
    graph.initializer.extend([numpy_helper.from_array(scale, scale_name), numpy_helper.from_array(shift, shift_name)])
    nodes = [helper.make_node("Mul", [inp.name, scale_name], [scaled], name=f"{BAKED_NODE_PREFIX}_mul"),
             helper.make_node("Add", [scaled, shift_name], [normalised], name=f"{BAKED_NODE_PREFIX}_add")]
    for k, node in enumerate(nodes):
        graph.node.insert(k, node)
    return proto


def bake_preprocessing(src: str | Path, dst: str | Path, mean: Sequence[float], std: Sequence[float]) -> dict:
    """Write a copy of ``src`` that takes raw ``[0, 1]`` input (see :func:`bake_proto`), checked and atomic.

    Works on fp32 and on int8 QDQ graphs (the Mul/Add stay float, in front of the first QuantizeLinear). Update the
    file's metadata afterwards (``exporters.metadata.for_file(meta, baked=True)``) so it says the input is raw.

    Returns:
        ``{"path", "bytes", "scale", "shift"}`` with the per-channel constants that were baked in.
    """
    import onnx

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"bake_preprocessing: {src} does not exist; export the model first")
    proto = onnx.load(str(src))
    bake_proto(proto, mean, std)
    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ValidationError(f"bake_preprocessing: the baked graph of {src.name} fails the ONNX checker: {e}") from e
    atomic_write_bytes(dst, data)
    s = np.asarray(std, dtype=np.float64)
    return {"path": str(dst), "bytes": len(data), "scale": (1.0 / s).tolist(),
            "shift": (-np.asarray(mean, dtype=np.float64) / s).tolist()}
