"""Pretrained ONNX models as torch modules (``--model model.onnx``), one module per job:

* :mod:`.validate` -- file safety: parse, custom domains, external-data locations, size caps, finite weights;
* :mod:`.prepare` -- Constant-node weights folded into initializers, opsets converted into the importer's range;
* :mod:`.ops` / :mod:`.resize` -- the torch implementations of the supported operators and their registry;
* :mod:`.graph_module` -- :class:`OnnxGraphModule`, the torch module that runs an imported graph;
* :mod:`.builder`, :mod:`.symbolic`, :mod:`.layer_ops`, :mod:`.op_attrs`, :mod:`.convert` -- the converter;
* :mod:`.info` -- probing a file's geometry and class count (sessions come from :mod:`pipeline.ort_session`).

Nothing here imports :mod:`pipeline.models.ort_graph` (the ORT-run fallback builds on this package, not the reverse).
"""
from __future__ import annotations

from pipeline.models.onnx.convert import onnx_to_torch
from pipeline.models.onnx.graph_module import OnnxGraphModule
from pipeline.models.onnx.info import onnx_model_info
from pipeline.models.onnx.ops import SUPPORTED_OPS, describe_ops, unsupported_ops
from pipeline.models.onnx.prepare import MAX_OPSET, MIN_OPSET, fold_constant_nodes, load_for_import, name_unknown_dims
from pipeline.models.onnx.validate import MAX_PROTO_BYTES, check_finite_weights, check_onnx_file

__all__ = ["MAX_OPSET", "MAX_PROTO_BYTES", "MIN_OPSET", "SUPPORTED_OPS", "OnnxGraphModule", "check_finite_weights",
           "check_onnx_file", "describe_ops", "fold_constant_nodes", "load_for_import", "name_unknown_dims",
           "onnx_model_info", "onnx_to_torch", "unsupported_ops"]
