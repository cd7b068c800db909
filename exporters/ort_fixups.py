"""Work around an ONNX Runtime converter failure on int8 graphs with a float Conv between QDQ pairs.

When the quantizer's accuracy guard keeps a Conv in float (its input comes from a DequantizeLinear, its output goes
to a QuantizeLinear), ONNX Runtime's basic-level ``WeightBiasQuantization`` transformer quantizes that Conv's weight
and bias at load time, and writes the bias DequantizeLinear with two inputs (no zero point). Loading such a graph
works, but saving it for the Runtime optimization style fails ("The sum of input arg count is not equal to size of
input defs in node ..._bias_dq", seen with onnxruntime 1.32), so no ``.ort`` could be made for that model.

:func:`runtime_safe_source` applies the basic-level optimizations ORT would apply anyway (the Runtime style applies
them too, and so does every session that runs the ``.onnx``), gives each two-input DequantizeLinear its explicit
zero point (the ONNX default, 0: the same values), and returns that graph as the converter's source; graphs the
transformer does not touch are returned unchanged, so their ``.ort`` bytes stay as before.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_write_bytes


def runtime_safe_source(src: Path, work_dir: Path) -> Path:
    """``src``, or a basic-optimized copy in ``work_dir`` with explicit DequantizeLinear zero points (see module)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    opt = work_dir / f"{src.stem}.basic.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(opt)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    proto = onnx.load(str(opt))
    inits = {t.name: t for t in proto.graph.initializer}
    fixed = 0
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx") and len(node.input) == 2 \
                and node.input[0] in inits:
            dtype = helper.tensor_dtype_to_np_dtype(inits[node.input[0]].data_type)
            zp = numpy_helper.from_array(np.zeros((), dtype=dtype), f"{node.name}_zero_point")
            proto.graph.initializer.append(zp)
            node.input.append(zp.name)
            fixed += 1
    if not fixed:
        opt.unlink()
        return src
    out = work_dir / src.name
    atomic_write_bytes(out, proto.SerializeToString())
    opt.unlink()
    return out
