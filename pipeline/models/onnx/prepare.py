"""Bring a checked ONNX model into the form the rest of the pipeline expects, as exports in the wild differ:

* weights stored as ``Constant`` nodes (paddle2onnx, some tf2onnx exports) become initializers
  (:func:`fold_constant_nodes`), so both the torch importer and the ONNX-graph factorizer see constant weights;
* dims written as ``-1`` or ``0`` values (paddle2onnx writes those for dynamic axes) become named dynamic dims
  (:func:`name_unknown_dims`), which ONNX shape inference and every runtime read as "any size";
* opsets outside :data:`MIN_OPSET`..:data:`MAX_OPSET` are converted with ``onnx.version_converter``
  (:func:`normalize_opset`), with an error naming the opset when the converter cannot do it.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from pipeline.errors import InputError
from pipeline.models.onnx.validate import DEFAULT_DOMAINS, check_onnx_file

__all__ = ["MAX_OPSET", "MIN_OPSET", "TARGET_OLD_OPSET", "default_opset", "fold_constant_nodes", "load_for_import",
           "name_unknown_dims", "normalize_opset"]

# The importer reads both the attribute and the input forms of Clip/Pad/Slice/Squeeze/ReduceMean/Split/Resize, so
# these opsets run natively; older and newer files are converted into this range first.
MIN_OPSET = 9
MAX_OPSET = 21
# Where an old file (opset 7-8) is converted to: 11 is the first opset with today's Resize/Pad/Clip input forms.
TARGET_OLD_OPSET = 11

_TENSOR_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def default_opset(model: Any, path: str) -> int:
    """The model's default-domain opset version.

    Raises:
        InputError: the model declares no default-domain opset.
    """
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise InputError(f"ONNX model {path!r} declares no default-domain opset; re-export it with a standard "
                         f"exporter")
    return int(max(versions))


def _constant_tensor(node: Any) -> Any | None:
    """The TensorProto a Constant node produces, or None for sparse/string forms (left as nodes)."""
    if len(node.attribute) != 1 or node.attribute[0].name not in _TENSOR_ATTRS:
        return None
    a = node.attribute[0]
    if a.name == "value":
        t = onnx.TensorProto()
        t.CopyFrom(a.t)
    else:
        value = helper.get_attribute_value(a)
        dtype = np.float32 if a.name.startswith("value_float") else np.int64
        t = numpy_helper.from_array(np.asarray(value, dtype=dtype))
    t.name = node.output[0]
    return t


def fold_constant_nodes(model: Any) -> int:
    """Turn the main graph's ``Constant`` nodes into initializers, in place; returns how many were folded.

    Constants that are graph outputs, sparse or string constants and constants inside subgraphs stay nodes (an
    initializer cannot be any of those). Node order and every value name are kept, so ONNX Runtime's results are
    unchanged; only where the tensor lives moves.
    """
    g = model.graph
    outputs = {o.name for o in g.output}
    keep, folded = [], []
    for node in g.node:
        t = None
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output[0] not in outputs:
            t = _constant_tensor(node)
        if t is None:
            keep.append(node)
        else:
            folded.append(t)
    if folded:
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(folded)
    return len(folded)


def name_unknown_dims(model: Any, prefix: str = "unk") -> int:
    """Replace every ``dim_value`` of ``-1`` or ``0`` in the graph's inputs, outputs and value_info by a named
    dynamic dim (``unk_0``, ``unk_1``, ...), in place; returns how many were renamed.

    A negative or zero ``dim_value`` is not a size: exporters (paddle2onnx) mean "dynamic" by it, but shape
    inference and strict runtimes take it literally. Each one gets its own name, since nothing says two of them are
    the same size.
    """
    taken = {d.dim_param for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)
             for d in v.type.tensor_type.shape.dim if d.HasField("dim_param")}
    count = 0
    for v in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            continue
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                name = f"{prefix}_{count}"
                while name in taken:
                    count += 1
                    name = f"{prefix}_{count}"
                d.ClearField("dim_value")
                d.dim_param = name
                taken.add(name)
                count += 1
    return count


def normalize_opset(model: Any, path: str) -> Any:
    """The model itself when its opset is in :data:`MIN_OPSET`..:data:`MAX_OPSET`, else a converted copy.

    Raises:
        InputError: ``onnx.version_converter`` cannot convert the file (its opset and the converter's message are
            named, with the fix).
    """
    v = default_opset(model, path)
    if MIN_OPSET <= v <= MAX_OPSET:
        return model
    target = TARGET_OLD_OPSET if v < MIN_OPSET else MAX_OPSET
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as e:  # the converter raises plain RuntimeError/ValidationError for unconvertible ops
        raise InputError(
            f"ONNX model {path!r} uses opset {v}, outside the {MIN_OPSET}-{MAX_OPSET} the importer reads, and "
            f"onnx.version_converter could not convert it to opset {target} ({type(e).__name__}: "
            f"{str(e).strip()[:300]}); re-export the model with an opset between {MIN_OPSET} and {MAX_OPSET}"
        ) from e
    return converted


def load_for_import(path: str | os.PathLike[str]) -> Any:
    """Check a file (:func:`~pipeline.models.onnx.validate.check_onnx_file`), fold its Constant-node weights into
    initializers, name its ``-1``/``0`` dims and bring its opset into the importer's range; returns the
    ``ModelProto``."""
    model = check_onnx_file(path)
    fold_constant_nodes(model)
    name_unknown_dims(model)
    return normalize_opset(model, str(path))
