"""torch -> ONNX export: opset 17, BatchNorm folded, dynamic batch, simplified, no Flatten, checked, written atomically.

Why the TorchScript exporter (``dynamo=False``): in torch 2.13 the dynamo exporter emits opset 18 and its
down-conversion to 17 fails (docs/benchmarking.md); the legacy exporter in EVAL mode with constant folding gives a clean
opset-17 graph with every Conv->BatchNorm pair folded, whatever the module structure (Sequential chains, ResNet
blocks that keep ``conv``/``bn`` as attributes).

A graph-only model (``OrtGraphModel``: an ONNX file the torch importer cannot convert, factorized on the graph) has
nothing to trace: :func:`export_graph` writes its graph through the same simplify / check / atomic-write tail.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.artifacts import atomic_write_bytes
from pipeline.errors import ValidationError
from pipeline.models.ort_graph import OrtGraphModel
from pipeline.ort_session import make_session
from pipeline.torch_eval import eval_mode

_PROTOBUF_LIMIT = 2**31 - 1


# ----------------------------------------------------------------------------------------------- export
def _flatten_to_reshape(model: Any) -> int:
    """Replace ``Flatten`` nodes by ``Reshape`` (CoreML MLProgram rejects Flatten). Returns how many were replaced.

    ``Flatten(axis=1)`` == ``Reshape([0, -1])`` (0 copies the batch dim, so the dynamic batch axis survives) and
    ``Flatten(axis=0)`` == ``Reshape([1, -1])``. Other axes need the product of leading dims, which a constant shape
    cannot express with a dynamic batch: those are left as Flatten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    existing = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    replaced = 0
    for idx, node in enumerate(list(graph.node)):
        if node.op_type != "Flatten" or node.domain not in ("", "ai.onnx"):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if axis not in (0, 1):
            continue
        shape_name = f"{node.name or 'flatten'}_reshape_shape"
        k = 0
        while shape_name in existing:
            k += 1
            shape_name = f"{node.name or 'flatten'}_reshape_shape_{k}"
        existing.add(shape_name)
        graph.initializer.append(numpy_helper.from_array(np.array([0 if axis == 1 else 1, -1], np.int64), shape_name))
        new = helper.make_node("Reshape", [node.input[0], shape_name], list(node.output),
                               name=(node.name[: -len("Flatten")] + "Reshape") if node.name.endswith("Flatten") else node.name)
        graph.node.remove(node)
        graph.node.insert(idx, new)
        replaced += 1
    return replaced


def _node_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def _simplify(model: Any, input_name: str, test_shape: list[int]) -> tuple[Any, str | None]:
    """onnxsim with its own numeric check; returns (model, None) or (original model, reason it was not used)."""
    try:
        import onnxsim
    except ImportError:
        return model, "onnxsim not installed (pip install onnxsim)"
    try:
        # onnxsim prints progress to stdout; keep the pipeline's output clean.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            simplified, ok = onnxsim.simplify(model, check_n=1, test_input_shapes={input_name: test_shape})
    except Exception as e:  # onnxsim failures are many and varied; the unsimplified graph is still valid
        return model, f"onnxsim failed: {type(e).__name__}: {e}"
    if not ok:
        return model, "onnxsim check failed (simplified outputs differ from the original graph)"
    # onnxsim records its own settings and counters as metadata_props ("onnxsim.*", ~20 entries): bookkeeping no
    # app reads, shipped in every file and a few percent of a small network's container
    keep = [(q.key, q.value) for q in simplified.metadata_props if not q.key.startswith("onnxsim.")]
    del simplified.metadata_props[:]
    for k, v in keep:
        simplified.metadata_props.add(key=k, value=v)
    return simplified, None


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    path: str | Path,
    opset: int = 17,
    simplify: bool = True,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "logits",
) -> dict:
    """Export ``model`` to a self-contained, checked ONNX file.

    Steps: eval mode (restored afterwards), ``torch.onnx.export(dynamo=False)`` with constant folding in EVAL mode
    (folds BatchNorm into Conv), optional onnxsim (kept only if its numeric check passes), Flatten -> Reshape,
    ``onnx.checker.check_model(full_check=True)``, atomic write without external data.

    Args:
        model: the PyTorch model (not modified).
        input_shape: ``(C, H, W)`` of one sample.
        path: destination ``.onnx`` file.
        opset: ONNX opset (17 is what the project targets).
        simplify: run onnxsim.
        dynamic_batch: make axis 0 of the input and output symbolic (``batch``).
        input_name: graph input name.
        output_name: graph output name.

    Returns:
        ``{"path", "opset", "nodes": {op_type: count}, "simplified", "bytes", "simplify_error",
        "flatten_replaced", "dynamic_batch", "input_name", "output_name"}``.

    Raises:
        ValidationError: the exported graph fails the ONNX checker or is too large for a single protobuf.
    """
    import onnx

    if isinstance(model, OrtGraphModel):  # a graph-only model (ONNX fallback): write its graph, nothing to trace
        return export_graph(model.proto, input_shape, path, opset=opset, simplify=simplify, dynamic_batch=dynamic_batch)
    path = Path(path)
    c, h, w = (int(v) for v in input_shape)
    # Trace with batch 2 so that nothing batch-1-specific (squeezes, constant reshapes) is baked into the graph.
    trace_batch = 2 if dynamic_batch else 1
    dummy = torch.zeros(trace_batch, c, h, w, dtype=torch.float32)
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        # The legacy-exporter deprecation warning is expected: we choose it on purpose (see module docstring).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes=axes,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
        )
    proto = onnx.load_from_string(buf.getvalue())
    info = _finish(proto, path, input_name, [trace_batch, c, h, w], simplify)
    return {"path": str(path), "opset": opset, **info, "dynamic_batch": dynamic_batch,
            "input_name": input_name, "output_name": output_name}


def _finish(proto: Any, path: Path, input_name: str, test_shape: list[int], simplify: bool) -> dict[str, Any]:
    """Shared tail of both exports: onnxsim, Flatten -> Reshape, size limit, full checker, atomic write."""
    import onnx

    simplified = False
    simplify_error: str | None = None
    if simplify:
        proto, simplify_error = _simplify(proto, input_name, test_shape)
        simplified = simplify_error is None
    flatten_replaced = _flatten_to_reshape(proto)
    data = proto.SerializeToString()
    if len(data) > _PROTOBUF_LIMIT:
        raise ValidationError(
            f"export: {path.name} would be {len(data)} bytes, over the 2 GiB protobuf limit; "
            "models this large need external data, which this exporter does not write"
        )
    try:
        # Check the exact bytes we are about to write, before they land on disk.
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ValidationError(f"export: ONNX checker rejected the graph for {path.name}: {e}") from e
    atomic_write_bytes(path, data)
    return {
        "nodes": _node_counts(proto),
        "simplified": simplified,
        "simplify_error": simplify_error,
        "flatten_replaced": flatten_replaced,
        "bytes": len(data),
    }


# ----------------------------------------------------------------------------------------------- graph-only models
def _opset(proto: Any) -> int:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _run(proto: Any, x: Any) -> Any:
    sess = make_session(proto.SerializeToString(), threads=1)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def make_batch_dynamic(proto: Any, input_shape: tuple[int, int, int]) -> bool:
    """Make axis 0 of the graph's input and outputs symbolic (``batch``) in place, if the graph allows it.

    Graphs exported with a fixed batch often bake it into Reshape shapes; so the change is kept only when ORT then
    runs a batch of 2 and gives each sample the output it gives that sample alone. Returns whether axis 0 is dynamic.
    """
    inp = proto.graph.input[0]
    dims = [inp.type.tensor_type.shape.dim[0]] + [o.type.tensor_type.shape.dim[0] for o in proto.graph.output
                                                   if len(o.type.tensor_type.shape.dim)]
    if all(not d.HasField("dim_value") for d in dims):
        return True  # already symbolic
    saved = [d.SerializeToString() for d in dims]
    for d in dims:
        d.ClearField("dim_value")
        d.dim_param = "batch"
    try:
        x = np.random.default_rng(0).standard_normal((2, *input_shape)).astype(np.float32)
        both, one = _run(proto, x), _run(proto, x[1:])
        if both.shape[0] == 2 and np.allclose(both[1:], one, atol=1e-5, rtol=1e-4):
            return True
    except Exception:  # any failure at batch 2 means the batch size is baked into the graph
        pass
    for d, blob in zip(dims, saved):
        d.Clear()
        d.ParseFromString(blob)
    return False


def export_graph(
    proto: Any,
    input_shape: tuple[int, int, int],
    path: str | Path,
    opset: int = 17,
    simplify: bool = True,
    dynamic_batch: bool = True,
) -> dict:
    """Write a graph-only model (the ONNX fallback) like :func:`export_onnx` writes a traced one.

    Steps: convert to ``opset`` when the graph has another (kept as is, with the reason, if the converter fails),
    dynamic batch when the graph allows it (:func:`make_batch_dynamic`), then the same onnxsim / Flatten -> Reshape
    / full checker / atomic write as :func:`export_onnx`. The graph keeps its own input and output names.

    Returns:
        The keys of :func:`export_onnx`, with ``opset`` the graph's final opset and ``opset_note`` when unchanged.
    """
    import onnx

    path = Path(path)
    opset_note = None
    if _opset(proto) != opset:
        try:
            from onnx import version_converter

            converted = version_converter.convert_version(proto, opset)
            onnx.checker.check_model(converted)
            proto = converted
        except Exception as e:  # the converter does not know every op pair; the original opset still runs
            opset_note = (f"kept opset {_opset(proto)}: conversion to {opset} failed "
                          f"({type(e).__name__}: {str(e)[:120]})")
    dynamic = make_batch_dynamic(proto, input_shape) if dynamic_batch else False
    input_name = proto.graph.input[0].name
    c, h, w = (int(v) for v in input_shape)
    info = _finish(proto, path, input_name, [2 if dynamic else 1, c, h, w], simplify)
    return {"path": str(path), "opset": _opset(proto), "opset_note": opset_note, **info, "dynamic_batch": dynamic,
            "input_name": input_name, "output_name": proto.graph.output[0].name}
