"""NNCodec (Fraunhofer HHI's implementation of the MPEG NNC standard, ISO/IEC 15938-17: DeepCABAC) as a peer of the
``peers`` suite: lossy coding of an ONNX model's float weights, decoded back into the same graph.

Only ``nncodec.nnc_core`` and its DeepCABAC extension are used: NNCodec's high-level ``nncodec.nnc`` module imports
its training framework (torchvision, OpenCV, pandas), which the codec itself does not need. :func:`encode` and
:func:`decode` follow ``nncodec.nnc.compress`` / ``decompress`` with NNCodec's default settings (``qp_density=2``,
dependent quantization, ``nonweight_qp=-75``, parameter optimisation on, no inference-based QP tuning, no batch-norm
folding, no local scaling adaptation, no fine tuning).

Tensors are named ``t<i>`` in the bitstream (NNCodec's parser rejects some names, and short names cost fewer bytes);
the order is kept in the graph skeleton, which :func:`code_onnx` counts beside the bitstream.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# NNCodec's defaults (nncodec.nnc.compress)
QP_DENSITY = 2
NONWEIGHT_QP = -75
CABAC_UNARY_LENGTH_MINUS1 = 10


def step_size(qp: int, qp_density: int = QP_DENSITY) -> float:
    """The quantization step NNCodec uses for a weight tensor at ``qp`` (its ``get_stepsize_from_qp``)."""
    k = 1 << qp_density
    return (k + (qp & (k - 1))) * 2.0 ** ((qp >> qp_density) - qp_density)


def encode(params: dict[str, np.ndarray], qp: int, use_dq: bool = True) -> bytes:
    """The NNC bitstream of ``params`` (float32 arrays): tensors of 2+ dims are weights, coded at ``qp``; 1-D ones
    (biases, norms) at ``NONWEIGHT_QP`` (NNCodec's split)."""
    from nncodec import nnc_core

    params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    mdl = nnc_core.nnr_model.NNRModel(params)
    info = mdl.model_info
    approx_data = nnc_core.approximator.init_approx_data(params, info, qp_density=QP_DENSITY, scan_order=0)
    approx_info = nnc_core.approximator.ApproxInfo(approx_data, info, "uniform", 0, qp, False, not use_dq,
                                                   CABAC_UNARY_LENGTH_MINUS1, 0, nonweight_qp=NONWEIGHT_QP).approx_info
    # nncodec.nnc.compress's encoder settings for a base (not differential) model
    enc_info = {"cabac_unary_length_minus1": CABAC_UNARY_LENGTH_MINUS1, "param_opt_flag": True,
                "partial_data_counter": 0, "general_profile_idc": 1, "node_id_present_flag": 1, "device_id": 0,
                "mps_parent_signalling_enabled_flag": 0, "parent_node_id_present_flag": 0,
                "temporal_context_modeling_flag": 0, "row_skip_enabled_flag": 0, "pre_signalling": 0}
    quantized = nnc_core.approximator.approx(approx_info, info, approx_data, enc_info)
    bitstream, _ = nnc_core.coder.encode(enc_info=enc_info, model_info=info, approx_data=quantized)
    return bytes(bitstream)


def decode(bitstream: bytes) -> dict[str, np.ndarray]:
    """The float32 tensors of an NNC bitstream written by :func:`encode` (``nncodec.nnc.decompress``)."""
    from nncodec import nnc_core

    maps = ("mps_sparsification_flag", "lps_sparsification_flag", "mps_pruning_flag", "lps_pruning_flag",
            "mps_unification_flag", "lps_unification_flag", "mps_decomposition_performance_map_flag",
            "lps_decomposition_performance_map_flag")
    model_info = {"parameter_type": {}, "parameter_dimensions": {}, "parameter_index": {}, "block_identifier": {},
                  "topology_storage_format": None, "topology_compression_format": None,
                  "performance_maps": {"mps": {}, "lps": {}}, "performance_map_flags": {m: {} for m in maps}}
    data = nnc_core.coder.decode(bytearray(bitstream), model_info, hls_stats={}, oob_dict={})
    nnc_core.approximator.rec(data)
    data = nnc_core.approximator.recompose_params(model_info, data)
    return {k: np.asarray(v, dtype=np.float32) for k, v in data["parameters"].items()}


def _coded_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The initializers NNCodec codes: every float32 tensor (shape-like int64 constants stay in the graph)."""
    return [i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]


def code_onnx(src: Path, dst: Path, qp: int, repeats: int = 3) -> dict[str, float]:
    """Code ``src``'s float32 initializers with NNCodec at ``qp``, decode them and write the rebuilt model to ``dst``.

    Returns ``bitstream_bytes``, ``graph_bytes`` (the ONNX file with the coded tensors emptied, zstd -19: what an
    app ships beside the bitstream to rebuild the graph), ``size_bytes`` (their sum), ``decode_mb_s`` (decoded
    float32 bytes per second of :func:`decode`, median of ``repeats``) and ``max_abs_error`` over the weights.
    """
    import zstandard

    model = onnx.load(str(src))
    inits = _coded_initializers(model)
    params = {f"t{i}": numpy_helper.to_array(t) for i, t in enumerate(inits)}
    bitstream = encode(params, qp)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = decode(bitstream)
        times.append(time.perf_counter() - t0)
    raw = sum(a.nbytes for a in params.values())
    skeleton = copy.deepcopy(model)
    for t in _coded_initializers(skeleton):
        t.ClearField("raw_data")
        t.ClearField("float_data")
    graph = zstandard.ZstdCompressor(level=19).compress(skeleton.SerializeToString())
    err = 0.0
    for i, t in enumerate(inits):
        dec = out[f"t{i}"].reshape(params[f"t{i}"].shape)
        err = max(err, float(np.abs(dec - params[f"t{i}"]).max()))
        t.CopyFrom(numpy_helper.from_array(dec, t.name))
    onnx.save(model, str(dst))
    return {"bitstream_bytes": len(bitstream), "graph_bytes": len(graph), "size_bytes": len(bitstream) + len(graph),
            "decode_mb_s": raw / 1e6 / max(float(np.median(times)), 1e-9), "max_abs_error": err}
