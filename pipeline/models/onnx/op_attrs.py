"""Handlers of the interpreted ops: each reads its node's attributes and constant inputs (in both the attribute
form of older opsets and the input form of newer ones) into the plain ``attrs`` dict that its function in
:data:`~pipeline.models.onnx.ops.OPS` takes, then emits the node (or folds it when every input is a constant).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from pipeline.errors import InputError
from pipeline.models.onnx.builder import GraphBuilder
from pipeline.models.onnx.ops import ONNX_TO_TORCH_DTYPE

__all__ = ["InterpretedOps"]


class InterpretedOps(GraphBuilder):
    """Handlers (``op_<OpType>``) of the ops run with torch functions (mixed into the converter)."""

    def op_Clip(self, n: Any) -> None:
        if self.opset < 11:
            lo, hi = self.attr(n, "min", -math.inf), self.attr(n, "max", math.inf)
        else:
            tlo, thi = self.const(n, 1, "min"), self.const(n, 2, "max")
            lo = float(tlo) if tlo is not None else -math.inf
            hi = float(thi) if thi is not None else math.inf
        self.generic(n, {"min": None if lo == -math.inf else float(lo),
                          "max": None if hi == math.inf else float(hi)}, [n.input[0]])

    def op_Dropout(self, n: Any) -> None:
        # Only the data input matters for inference; ratio/training_mode constants need no buffers.
        self.generic(n, {}, [n.input[0]])

    def op_HardSigmoid(self, n: Any) -> None:
        self.generic(n, {"alpha": float(self.attr(n, "alpha", 0.2)), "beta": float(self.attr(n, "beta", 0.5))})

    def op_LeakyRelu(self, n: Any) -> None:
        self.generic(n, {"alpha": float(self.attr(n, "alpha", 0.01))})

    def op_MaxPool(self, n: Any) -> None:
        self.generic(n, self.pool_attrs(n, "max"), [n.input[0]])

    def op_AveragePool(self, n: Any) -> None:
        self.generic(n, self.pool_attrs(n, "avg"), [n.input[0]])

    def op_Flatten(self, n: Any) -> None:
        self.generic(n, {"axis": int(self.attr(n, "axis", 1))})

    def op_Reshape(self, n: Any) -> None:
        allowzero = bool(self.attr(n, "allowzero", 0))
        if self.is_const(n.input[1]):
            shape = self.ints(self.consts[n.input[1]])
            self.generic(n, {"shape": tuple(shape or ()), "allowzero": allowzero}, [n.input[0]])
        else:  # a run-time shape tensor (shape arithmetic beyond what is evaluated symbolically)
            self.generic(n, {"shape": None, "allowzero": allowzero})

    def op_Concat(self, n: Any) -> None:
        self.generic(n, {"axis": int(self.attr(n, "axis"))})

    def op_Shape(self, n: Any) -> None:
        self.generic(n, {"start": self.attr(n, "start", 0), "end": self.attr(n, "end", None)})

    def op_Gather(self, n: Any) -> None:
        self.generic(n, {"axis": int(self.attr(n, "axis", 0))})

    def op_Unsqueeze(self, n: Any) -> None:
        axes = self.axes(n, 13)
        if not axes:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} has no axes")
        self.generic(n, {"axes": axes}, [n.input[0]])

    def op_Squeeze(self, n: Any) -> None:
        self.generic(n, {"axes": self.axes(n, 13)}, [n.input[0]])

    def op_ReduceMean(self, n: Any) -> None:
        self.generic(n, {"axes": self.axes(n, 18) or [], "keepdims": bool(self.attr(n, "keepdims", 1)),
                          "noop": bool(self.attr(n, "noop_with_empty_axes", 0))}, [n.input[0]])

    def op_Softmax(self, n: Any) -> None:
        legacy = self.opset < 13
        self.generic(n, {"axis": int(self.attr(n, "axis", 1 if legacy else -1)), "legacy": legacy})

    def op_Transpose(self, n: Any) -> None:
        perm = self.attr(n, "perm", None)
        self.generic(n, {"perm": None if perm is None else [int(v) for v in perm]})

    def op_Pad(self, n: Any) -> None:
        mode = self.attr(n, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
        if torch_mode is None:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} uses pad mode {mode!r}")
        if self.opset < 11:
            pads, value, axes = list(self.attr(n, "pads", [])), float(self.attr(n, "value", 0.0)), None
        else:
            pads = self.ints(self.const(n, 1, "pads")) or []
            v = self.const(n, 2, "constant_value")
            value = float(v) if v is not None else 0.0
            axes = self.ints(self.const(n, 3, "axes"))
        self.generic(n, {"pads": pads, "value": value, "mode": torch_mode, "axes": axes}, [n.input[0]])

    def op_Slice(self, n: Any) -> None:
        self.generic(n, self.slice_attrs(n), [n.input[0]])

    def op_ConstantOfShape(self, n: Any) -> None:
        value = self.attr(n, "value", None)
        t = self.tensor(value) if value is not None else torch.zeros(1, dtype=torch.float32)
        self.generic(n, {"value": t})

    def op_Cast(self, n: Any) -> None:
        to = int(self.attr(n, "to"))
        if to not in ONNX_TO_TORCH_DTYPE:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} casts to unsupported type {to}")
        self.generic(n, {"dtype": ONNX_TO_TORCH_DTYPE[to]})
