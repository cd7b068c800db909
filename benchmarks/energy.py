"""MACs, parameters and bytes counted from the ONNX graph itself, and an energy / roofline proxy per device profile.

Counting from the exported graph (not the PyTorch module) means the numbers describe exactly what is shipped: folded
BatchNorms, factorized Conv chains and QDQ int8 weights included.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.targets import PROFILES, DeviceProfile
from pipeline.errors import ConfigError, InputError, ValidationError
from pipeline.ort_session import make_session

# op_type -> (activation input index, weight input index, bias input index or None)
_COMPUTE_OPS: dict[str, tuple[int, int, int | None]] = {
    "Conv": (0, 1, 2),
    "ConvTranspose": (0, 1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1, None),
    "ConvInteger": (0, 1, None),
    "MatMulInteger": (0, 1, None),
    "QLinearConv": (0, 3, 8),
    "QLinearMatMul": (0, 3, None),
}
_INT_OPS = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"}
# Inputs that are quantization parameters (scales / zero points), not model parameters.
_QPARAM_INPUTS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "QLinearConv": (1, 2, 4, 5, 6, 7),
                  "QLinearMatMul": (1, 2, 4, 5, 6, 7), "ConvInteger": (2, 3), "MatMulInteger": (2, 3)}


def _itemsize(elem_type: int) -> int:
    from onnx import helper

    try:
        return int(helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except Exception:  # undefined / exotic types (4-bit, float8): count one byte
        return 1


def _dtype_name(elem_type: int) -> str:
    from onnx import TensorProto

    return TensorProto.DataType.Name(elem_type).lower()


def module_path(node_name: str) -> str:
    """Dotted PyTorch module path from a TorchScript-exported node name (``/layer1/layer1.0/conv1/Conv`` ->
    ``layer1.0.conv1``); ``""`` when the name carries no scope.

    Each ``/``-component is either already fully qualified (``layer1.0`` under ``layer1``, as for Sequential
    children) or a bare attribute name (``conv1``): join accordingly.
    """
    parts = [p for p in node_name.split("/")[:-1] if p]
    dotted = ""
    for p in parts:
        dotted = p if (not dotted or p.startswith(dotted + ".")) else f"{dotted}.{p}"
    return dotted


def _pin_input(model: Any, input_shape: tuple[int, int, int], name: str) -> None:
    """Fix the single graph input to ``(1, *input_shape)`` and forget stale shapes so inference recomputes them."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    real = [i for i in graph.input if i.name not in inits]
    if len(real) != 1:
        raise InputError(f"energy: {name} must have exactly one input, found {[i.name for i in real]}")
    dims = real[0].type.tensor_type.shape.dim
    full = [1, *[int(v) for v in input_shape]]
    if len(dims) != len(full):
        raise InputError(f"energy: {name} input has rank {len(dims)}, expected {len(full)} for (1, {tuple(input_shape)})")
    for d, v in zip(dims, full):
        d.ClearField("dim_param")
        d.dim_value = v
    del graph.value_info[:]
    for o in graph.output:
        # Symbolic, -1 and 0 sizes (paddle2onnx writes the latter for dynamic axes) are left to inference.
        for d in o.type.tensor_type.shape.dim:
            if d.HasField("dim_param") or (d.HasField("dim_value") and d.dim_value <= 0):
                d.ClearField("dim_param")
                d.ClearField("dim_value")


def _ort_shapes(path: Path, names: list[str], types: dict[str, int], input_shape: tuple[int, int, int]
                ) -> dict[str, list[int]]:
    """Shapes of the named values, read from one ONNX Runtime run on zeros at ``(batch, *input_shape)``.

    For the values ONNX shape inference leaves unknown (sizes computed at run time by Shape/Reshape/Slice chains,
    as converters export dynamic axes); the batch is 1 unless the graph fixes it. Values whose type is not known
    are asked for as float.
    """
    import numpy as np
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(helper.make_tensor_value_info(name, types.get(name) or onnx.TensorProto.FLOAT,
                                                                    None))
    sess = make_session(model.SerializeToString(), threads=1, opt_level="disabled")
    inp = sess.get_inputs()[0]
    dim0 = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 1
    outs = sess.run(names, {inp.name: np.zeros((dim0, *input_shape), np.float32)})
    return {n: [int(d) for d in o.shape] for n, o in zip(names, outs)}


def onnx_layer_stats(path: str | Path, input_shape: tuple[int, int, int]) -> dict:
    """Per-layer MACs, parameters, weight bytes and activation bytes of an ONNX model, at batch 1.

    Shapes come from ONNX shape inference with the input fixed to ``(1, *input_shape)``; those it leaves unknown
    (dynamic dims computed at run time) from one ONNX Runtime run on zeros of that shape. Conv MACs =
    ``N * C_out * H' * W' * (C_in / groups) * kh * kw``; Gemm ``M * K * N``; MatMul ``prod(out) * K``. A layer whose
    weight is an int8/uint8 initializer behind a ``DequantizeLinear`` (QDQ), or a QLinear/Integer op, counts as int8;
    its activation bytes use the quantized dtype when the input comes from a ``DequantizeLinear`` / the output feeds
    only ``QuantizeLinear`` nodes.

    Args:
        path: ``.onnx`` model (external data is not loaded: only shapes are read).
        input_shape: ``(C, H, W)``.

    Returns:
        ``{"macs", "macs_int8", "macs_fp32", "params", "params_outside_layers", "weight_bytes", "activation_bytes",
        "input_shape", "layers": [{"name", "module", "op", "precision", "macs", "params", "weight_bytes",
        "weight_numel", "bias_numel", "act_in_numel", "act_out_numel", "act_in_bytes", "act_out_bytes",
        "weight_shape", "weight_dtype", "out_shape", "group"}]}``.

    Raises:
        InputError: missing/unreadable model or not exactly one graph input.
        ValidationError: a compute node's shapes could not be inferred.
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise InputError(f"energy: model {p} does not exist")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise InputError(f"energy: {p} is not a readable ONNX model: {e}") from e
    _pin_input(model, input_shape, p.name)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    vinfo: dict[str, tuple[list[int] | None, int]] = {}
    for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim] if tt.HasField("shape") else None
        vinfo[v.name] = (None if shape is None or any(s < 0 for s in shape) else shape, tt.elem_type)
    for name, t in inits.items():
        vinfo[name] = (list(t.dims), t.data_type)
    producer = {o: n for n in graph.node for o in n.output}
    # Dynamic dims that inference cannot follow (Shape -> Gather -> Reshape chains of converters): one ORT run at
    # the real input shape fills every compute node's missing shapes.
    missing = sorted({n.input[i] if i < len(n.input) else "" for n in graph.node
                      if n.op_type in _COMPUTE_OPS and n.domain in ("", "ai.onnx")
                      for i in _COMPUTE_OPS[n.op_type][:2]} | {n.output[0] for n in graph.node
                                                               if n.op_type in _COMPUTE_OPS})
    missing = [v for v in missing if v and v not in inits and vinfo.get(v, (None, 0))[0] is None
               and (producer.get(v) is None or producer[v].op_type != "Constant")]
    if missing:
        try:
            filled = _ort_shapes(p, missing, {k: t for k, (_, t) in vinfo.items()}, input_shape)
        except Exception:  # ORT's own exception types: the shapes stay unknown and the error below names them
            filled = {}
        for v, shape in filled.items():
            vinfo[v] = (shape, vinfo.get(v, (None, onnx.TensorProto.FLOAT))[1])
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)

    def const(name: str) -> tuple[Any, bool]:
        """(initializer behind ``name``, whether it is reached through a DequantizeLinear)."""
        if name in inits:
            return inits[name], False
        prod = producer.get(name)
        if prod is not None and prod.op_type == "DequantizeLinear" and prod.input[0] in inits:
            return inits[prod.input[0]], True
        if prod is not None and prod.op_type == "Constant":
            for a in prod.attribute:
                if a.name == "value":
                    return a.t, False
        return None, False

    def act_dtype_in(name: str) -> int:
        prod = producer.get(name)
        if prod is not None and prod.op_type == "DequantizeLinear":
            return vinfo.get(prod.input[0], (None, 1))[1]
        return vinfo.get(name, (None, 1))[1]

    def act_dtype_out(name: str) -> int:
        cons = consumers.get(name, [])
        if cons and all(c.op_type == "QuantizeLinear" for c in cons):
            return vinfo.get(cons[0].output[0], (None, 1))[1]
        return vinfo.get(name, (None, 1))[1]

    qparams = {n.input[i] for n in graph.node for i in _QPARAM_INPUTS.get(n.op_type, ()) if i < len(n.input) and n.input[i]}
    used: set[str] = set()
    layers: list[dict[str, Any]] = []
    for idx, n in enumerate(graph.node):
        if n.op_type not in _COMPUTE_OPS or n.domain not in ("", "ai.onnx"):
            continue
        ai, wi, bi = _COMPUTE_OPS[n.op_type]
        x_name, y_name = n.input[ai], n.output[0]
        w, w_dq = const(n.input[wi]) if wi < len(n.input) else (None, False)
        b, _ = const(n.input[bi]) if bi is not None and bi < len(n.input) and n.input[bi] else (None, False)
        x_shape = vinfo.get(x_name, (None, 0))[0]
        y_shape = vinfo.get(y_name, (None, 0))[0]
        w_shape = list(w.dims) if w is not None else vinfo.get(n.input[wi], (None, 0))[0]
        label = n.name or f"{n.op_type}_{idx}"
        if x_shape is None or y_shape is None or w_shape is None:
            raise ValidationError(f"energy: shapes of {n.op_type} node {label!r} in {p.name} could not be inferred "
                                  f"(input {x_shape}, weight {w_shape}, output {y_shape})")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            # w is (C_out, C_in/groups, kh, kw): each output element needs C_in/groups * kh * kw MACs.
            macs = y_shape[0] * y_shape[1] * math.prod(y_shape[2:]) * math.prod(w_shape[1:])
        elif n.op_type == "ConvTranspose":
            macs = x_shape[0] * x_shape[1] * math.prod(x_shape[2:]) * math.prod(w_shape[1:])
        elif n.op_type == "Gemm":
            m_, k_ = (x_shape[1], x_shape[0]) if attrs.get("transA", 0) else (x_shape[0], x_shape[1])
            macs = m_ * k_ * (w_shape[0] if attrs.get("transB", 0) else w_shape[1])
        else:  # MatMul family: every output element is a K-long dot product
            macs = math.prod(y_shape) * x_shape[-1]
        params = wbytes = 0
        for t in (w, b):
            if t is not None:
                used.add(t.name)
                cnt = math.prod(t.dims)
                params += cnt
                wbytes += cnt * _itemsize(t.data_type)
        if n.op_type in _INT_OPS or (w_dq and w is not None and w.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)):
            precision = "int8"
        elif w is not None and w.data_type == onnx.TensorProto.FLOAT16:
            precision = "fp16"
        else:
            precision = "fp32"
        layers.append({
            "name": label,
            "module": (module_path(n.name) or n.name) if n.name else label,
            "op": n.op_type,
            "precision": precision,
            "macs": int(macs),
            "params": int(params),
            "weight_bytes": int(wbytes),
            "weight_numel": int(math.prod(w.dims)) if w is not None else 0,
            "bias_numel": int(math.prod(b.dims)) if b is not None else 0,
            "act_in_numel": int(math.prod(x_shape)),
            "act_out_numel": int(math.prod(y_shape)),
            "act_in_bytes": int(math.prod(x_shape) * _itemsize(act_dtype_in(x_name))),
            "act_out_bytes": int(math.prod(y_shape) * _itemsize(act_dtype_out(y_name))),
            "weight_shape": [int(v) for v in w_shape],
            "weight_dtype": _dtype_name(w.data_type) if w is not None else None,
            "out_shape": [int(v) for v in y_shape],
            "group": int(attrs.get("group", 1)),
        })
    # Parameters outside compute layers (e.g. a BatchNorm that follows no conv), but not quantization scales / zero
    # points or integer shape constants.
    other = sum(math.prod(t.dims) for name, t in inits.items()
                if name not in used and name not in qparams
                and t.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32))
    return {
        "macs": sum(l["macs"] for l in layers),
        "macs_int8": sum(l["macs"] for l in layers if l["precision"] == "int8"),
        "macs_fp32": sum(l["macs"] for l in layers if l["precision"] != "int8"),
        "params": sum(l["params"] for l in layers) + int(other),
        "params_outside_layers": int(other),
        "weight_bytes": sum(l["weight_bytes"] for l in layers),
        "activation_bytes": sum(l["act_in_bytes"] + l["act_out_bytes"] for l in layers),
        "input_shape": [int(v) for v in input_shape],
        "layers": layers,
    }


# ----------------------------------------------------------------------------------------------- energy proxy
def _mac_pj(profile: DeviceProfile, precision: str) -> float:
    e = profile.energies_pj
    if precision == "int8":
        # int8 products accumulate into 32-bit integers: 8-bit mult + 32-bit add.
        return e["int8_mult"] + e["int32_add"]
    if precision == "fp16":
        return e["fp16_mult"] + e["fp16_add"]
    return e["fp32_mult"] + e["fp32_add"]


def energy_proxy(stats: dict, profile: DeviceProfile, precision: str = "fp32") -> dict:
    """Energy and roofline latency estimate of one inference (batch 1) on ``profile``.

    Energy per layer = MACs x (mult + add energy at the layer's precision) + on-chip bytes x SRAM energy/byte +
    off-chip bytes x DRAM energy/byte (Horowitz 45 nm table, docs/methods.md). Memory model: if all weights of the model
    fit on-chip they stay resident (no DRAM traffic for weights), otherwise every layer streams its weights from DRAM;
    activations go to DRAM only for the part of a layer's input + output that does not fit in the on-chip memory left.
    Roofline latency per layer = ``max(MACs / peak MAC/s, DRAM bytes / bandwidth)``, summed over layers. Only
    Conv/Gemm/MatMul layers are modelled (pooling, adds and activations are cheap next to them).

    Args:
        stats: output of ``onnx_layer_stats``.
        profile: device profile.
        precision: ``"graph"``: each layer at the precision found in the graph. ``"fp32"``: every layer at fp32
            (4-byte weights/activations). ``"int8"``: layers the graph holds in int8 stay int8 and, for a graph with
            no int8 layer at all (a what-if for a float model), every layer is modelled as int8 (1-byte weights and
            activations, 4-byte biases).

    Returns:
        ``{"precision", "table", "profile", "mac_pj", "dram_pj_per_byte", "sram_pj_per_byte", "energy_uj",
        "breakdown_uj": {"compute", "sram", "dram"}, "dram_bytes", "sram_bytes", "weights_resident",
        "roofline": {"latency_ms", "compute_ms", "memory_ms", ...}, "layers": [...]}``.
    """
    if precision not in ("graph", "fp32", "int8"):
        raise ConfigError(f"energy_proxy: unknown precision {precision!r}; known: graph, fp32, int8")
    e = profile.energies_pj
    dram_pj_b = e["dram_read_32bit"] / 4.0
    sram_pj_b = e["sram_read_32bit"] / 4.0
    graph_has_int8 = any(l["precision"] == "int8" for l in stats["layers"])
    rows = []
    for l in stats["layers"]:
        if precision == "graph" or (precision == "int8" and graph_has_int8):
            prec = l["precision"]
            w, a_in, a_out = l["weight_bytes"], l["act_in_bytes"], l["act_out_bytes"]
        else:
            prec = precision
            size = 1 if prec == "int8" else 4
            w = l.get("weight_numel", 0) * size + l.get("bias_numel", 0) * 4
            a_in, a_out = l.get("act_in_numel", 0) * size, l.get("act_out_numel", 0) * size
        rows.append((l, prec, w, a_in, a_out))
    total_w = sum(r[2] for r in rows)
    resident = total_w <= profile.onchip_bytes
    act_room = profile.onchip_bytes - (total_w if resident else 0)
    tot = {"compute": 0.0, "sram": 0.0, "dram": 0.0}
    dram_total = sram_total = 0
    compute_s = memory_s = roof_s = 0.0
    bound_counts = {"compute": 0, "memory": 0}
    out_layers = []
    for l, prec, w, a_in, a_out in rows:
        dram = (0 if resident else w) + max(0, a_in + a_out - act_room)
        sram = w + a_in + a_out - dram
        c_pj = l["macs"] * _mac_pj(profile, prec)
        s_pj, d_pj = sram * sram_pj_b, dram * dram_pj_b
        t_c = l["macs"] / profile.peak_macs("int8" if prec == "int8" else "fp32")
        t_m = dram / profile.mem_bandwidth
        bound = "compute" if t_c >= t_m else "memory"
        bound_counts[bound] += 1
        compute_s += t_c
        memory_s += t_m
        roof_s += max(t_c, t_m)
        tot["compute"] += c_pj
        tot["sram"] += s_pj
        tot["dram"] += d_pj
        dram_total += dram
        sram_total += sram
        out_layers.append({
            "name": l["name"], "module": l.get("module"), "precision": prec,
            "energy_uj": (c_pj + s_pj + d_pj) / 1e6, "compute_uj": c_pj / 1e6, "sram_uj": s_pj / 1e6,
            "dram_uj": d_pj / 1e6, "dram_bytes": int(dram), "roofline_ms": max(t_c, t_m) * 1e3, "bound": bound,
        })
    return {
        "precision": precision,
        "table": "Horowitz ISSCC 2014, 45 nm 0.9 V: " + ", ".join(f"{k} {v:g} pJ" for k, v in e.items()),
        "profile": profile.as_dict(),
        "mac_pj": {p: _mac_pj(profile, p) for p in ("fp32", "int8")},
        "dram_pj_per_byte": dram_pj_b,
        "sram_pj_per_byte": sram_pj_b,
        "energy_uj": sum(tot.values()) / 1e6,
        "breakdown_uj": {k: v / 1e6 for k, v in tot.items()},
        "dram_bytes": int(dram_total),
        "sram_bytes": int(sram_total),
        "weights_resident": resident,
        "roofline": {
            "latency_ms": roof_s * 1e3,
            "compute_ms": compute_s * 1e3,
            "memory_ms": memory_s * 1e3,
            "layers_compute_bound": bound_counts["compute"],
            "layers_memory_bound": bound_counts["memory"],
            "note": "lower bound from peak MAC/s and DRAM bandwidth; per-node overhead and layouts are not modelled",
        },
        "layers": out_layers,
    }


def roofline_all(stats: dict, precision: str = "graph") -> dict[str, dict]:
    """Roofline latency and energy totals of one model on every registered device profile.

    Args:
        stats: output of ``onnx_layer_stats``.
        precision: as for ``energy_proxy``.

    Returns:
        ``{profile name: {"latency_ms", "compute_ms", "memory_ms", "energy_uj", "breakdown_uj", "source"}}``.
    """
    out = {}
    for name in PROFILES.names():
        prof = PROFILES.get(name)
        r = energy_proxy(stats, prof, precision=precision)
        out[name] = {**{k: r["roofline"][k] for k in ("latency_ms", "compute_ms", "memory_ms")},
                     "energy_uj": r["energy_uj"], "breakdown_uj": r["breakdown_uj"], "source": prof.source}
    return out
