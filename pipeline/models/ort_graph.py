"""A model that exists only as an ONNX graph, run by ONNX Runtime: the fallback for files the torch importer cannot
convert (``--model model.onnx`` with operators outside :data:`~pipeline.models.onnx.ops.SUPPORTED_OPS`).

Why a module at all: every stage already speaks ``nn.Module`` (accuracy, pseudo-labels, parity checks, checkpoints),
so a thin wrapper whose ``forward`` runs ORT lets the graph flow through the same code. What it cannot do is learn:
it has no parameters, so the finetune stage skips it (and says so), the factorize stage rewrites its graph
(:mod:`pipeline.factorize.onnx_graph`) and the exporter writes its graph instead of tracing it.

Only graphs the pipeline checked (:func:`~pipeline.models.onnx.validate.check_onnx_file`) or produced itself are
wrapped, and sessions use the CPU execution provider with no custom-op libraries. Weights a converter stored as
``Constant`` nodes are folded into initializers on load, so the graph factorizer sees them as constant weights.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.models.onnx.prepare import fold_constant_nodes, name_unknown_dims
from pipeline.models.onnx.validate import MAX_PROTO_BYTES, check_finite_weights, check_onnx_file
from pipeline.ort_session import make_session

__all__ = ["OrtGraphModel", "load_graph_model"]


class OrtGraphModel(nn.Module):
    """An ONNX classifier graph with one image input, evaluated by ONNX Runtime (CPU EP) in ``forward``.

    It holds the serialised ``ModelProto`` (``model_bytes``) and no parameters, so ``state_dict()`` is empty and
    ``deepcopy`` is cheap; the ORT session is created lazily and never copied or pickled.
    """

    def __init__(self, model_bytes: bytes, source: str = "") -> None:
        super().__init__()
        self.model_bytes = bytes(model_bytes)
        self.source = source
        self._session: Any = None

    @classmethod
    def from_proto(cls, proto: Any, source: str = "") -> "OrtGraphModel":
        """Wrap an in-memory ``onnx.ModelProto`` (serialised once)."""
        return cls(proto.SerializeToString(), source)

    @property
    def proto(self) -> Any:
        """A fresh ``onnx.ModelProto`` of the graph (callers may modify it)."""
        return onnx.load_from_string(self.model_bytes)

    def session(self) -> Any:
        """The cached ONNX Runtime session."""
        if self._session is None:
            self._session = make_session(self.model_bytes, threads=1)
        return self._session

    def extra_repr(self) -> str:
        return f"source={self.source!r}, bytes={len(self.model_bytes)}"

    def __getstate__(self) -> dict[str, Any]:
        # ORT sessions cannot be copied or pickled: drop it, the copy builds its own on first use.
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the graph's first output for ``x`` ``(N, C, H, W)`` (no gradient: the graph is not trainable).

        A graph with a fixed batch size is run in chunks of that size (the tail zero-padded and cut off again).
        """
        sess = self.session()
        inp = sess.get_inputs()[0]
        xs = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        dim0 = inp.shape[0] if inp.shape else None
        fixed = int(dim0) if isinstance(dim0, int) and dim0 > 0 else None
        if fixed is None or len(xs) == fixed:
            out = sess.run(None, {inp.name: xs})[0]
        else:
            parts = []
            for i in range(0, len(xs), fixed):
                xb = xs[i:i + fixed]
                pad = fixed - len(xb)
                if pad:
                    xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), np.float32)])
                parts.append(sess.run(None, {inp.name: xb})[0][: fixed - pad])
            out = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def load_graph_model(path: str | os.PathLike[str], input_shape: tuple[int, int, int], why: str) -> OrtGraphModel:
    """Wrap an ONNX file the torch importer cannot convert, after checking that ONNX Runtime runs it.

    Args:
        path: the ``.onnx`` file (validated again with ``check_onnx_file``: checker, external data, custom domains).
        input_shape: ``(C, H, W)`` of one sample; the graph is run once on zeros of this shape.
        why: why the importer could not convert it (quoted in the error when ORT cannot run it either).

    Returns:
        The wrapped graph (external data, if any, read into the single serialised proto; Constant-node weights
        folded into initializers).

    Raises:
        InputError: invalid file, custom-op domains (named by ``check_onnx_file``), NaN/Inf weights, a graph over the
            protobuf limit once external data is inlined, or a graph ONNX Runtime cannot run (its message quoted).
    """
    spath = str(path)
    proto = check_onnx_file(path)
    check_finite_weights(proto, spath)
    fold_constant_nodes(proto)
    name_unknown_dims(proto)
    data = proto.SerializeToString()
    if len(data) > MAX_PROTO_BYTES:
        raise InputError(f"ONNX model {spath!r}: with its external data it is over the 2 GiB protobuf limit, which "
                         f"the graph-level fallback cannot hold in one file; use a model the torch importer converts")
    model = OrtGraphModel(data, source=Path(spath).name)
    try:
        sess = model.session()
        inp = sess.get_inputs()[0]
        dim0 = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 1
        sess.run(None, {inp.name: np.zeros((dim0, *input_shape), np.float32)})
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, NotImplemented, ...)
        raise InputError(
            f"ONNX model {spath!r} cannot be used: the torch importer cannot convert it ({why}) and ONNX Runtime "
            f"cannot run it on a {tuple(input_shape)} input either ({type(e).__name__}: {str(e).strip()[:300]}); "
            f"re-export it with standard ONNX operators and a matching input shape"
        ) from e
    return model
