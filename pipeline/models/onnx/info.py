"""Probing an ONNX model before any work is done: :func:`onnx_model_info` reads the input geometry and the class
count (running the model once on zeros when the output does not declare it)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.models.onnx.convert import onnx_to_torch
from pipeline.models.onnx.ops import unsupported_ops
from pipeline.models.onnx.prepare import fold_constant_nodes
from pipeline.models.onnx.validate import check_onnx_file
from pipeline.ort_session import make_session

__all__ = ["declared_input_hw", "onnx_model_info"]

# Spatial side used only when the model's input side is dynamic and the class count must be found by running it.
_PROBE_SIZE = 224


def _run_first_output(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The first output of a single-input model for ``x`` (float32), run by ONNX Runtime on one thread."""
    sess = make_session(model_bytes, threads=1)
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})[0])


def declared_input_hw(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(H, W)`` the model's single NCHW input fixes, or None when either spatial axis is dynamic (weights are not
    loaded: only the graph's input declaration is read)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # missing or corrupt: onnx_model_info (check_onnx_file) names the problem and the fix
        return None
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        return None  # onnx_model_info names the problem
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[2] is None or dims[3] is None:
        return None
    return int(dims[2]), int(dims[3])


def onnx_model_info(path: str | os.PathLike[str], probe_hw: tuple[int, int] | None = None) -> dict[str, Any]:
    """Geometry of an ONNX classifier, to check a dataset against it before any work is done.

    Args:
        path: the ``.onnx`` file.
        probe_hw: ``(H, W)`` to run the model at when the output does not declare the class count and the input's
            spatial axes are dynamic (the data's real size); 224 x 224 when not given.

    Returns:
        ``{"num_classes": int, "in_channels": int, "input_size": int | None, "input_hw": (H, W) | None,
        "input_name": str}``; ``input_size`` is the square input side when the graph fixes it, ``None`` when the
        spatial axes are dynamic (or not square); ``input_hw`` the fixed ``(H, W)``, None when either is dynamic.

    Raises:
        InputError: invalid file, not exactly one input, a non NCHW input, or a dynamic channel axis.
    """
    model = check_onnx_file(path)
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise InputError(f"ONNX model {str(path)!r} has {len(inputs)} graph inputs; exactly one image input is "
                         f"expected")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise InputError(f"ONNX model {str(path)!r}: input {inp.name!r} has rank {len(dims)}; an NCHW image input "
                         f"(rank 4) is expected")
    if dims[1] is None:
        raise InputError(f"ONNX model {str(path)!r}: input {inp.name!r} has a dynamic channel axis; fix it in the "
                         f"model (e.g. onnxsim --overwrite-input-shape)")
    h, w = dims[2], dims[3]
    out_dims: list[int | None] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                  for d in model.graph.output[0].type.tensor_type.shape.dim]
    class_axis = 0 if len(out_dims) == 1 else 1
    num_classes = out_dims[class_axis] if len(out_dims) > class_axis else None
    if num_classes is None:
        # The class axis is not declared: run the model once on zeros to read it - the imported torch module when
        # the importer converts the file, else ONNX Runtime (the graph-level fallback runs such models in ORT too).
        ph, pw = probe_hw or (_PROBE_SIZE, _PROBE_SIZE)
        probe = torch.zeros(dims[0] or 1, int(dims[1]), h or int(ph), w or int(pw))
        try:
            if unsupported_ops(model):
                fold_constant_nodes(model)
                y = torch.from_numpy(_run_first_output(model.SerializeToString(), probe.numpy()))
            else:
                with torch.no_grad():
                    y = onnx_to_torch(path)(probe)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"ONNX model {str(path)!r}: its output does not declare the class count and running it "
                             f"on zeros of shape {tuple(probe.shape)} failed ({type(e).__name__}: {str(e)[:200]}); "
                             f"declare the output shape in the model") from e
        y = y[0] if isinstance(y, tuple) else y
        num_classes = int(y.shape[class_axis])
    return {"num_classes": int(num_classes), "in_channels": int(dims[1]),
            "input_size": h if h is not None and h == w else None,
            "input_hw": (int(h), int(w)) if h is not None and w is not None else None, "input_name": inp.name}
