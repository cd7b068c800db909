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
from pipeline.models.onnx.resize import COORD_MODES, NEAREST_MODES

__all__ = ["InterpretedOps"]

_HALF = (10, 16)  # TensorProto.FLOAT16, BFLOAT16


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

    def _reduce(self, n: Any, axes_input_from: int) -> None:
        self.generic(n, {"axes": self.axes(n, axes_input_from) or [], "keepdims": bool(self.attr(n, "keepdims", 1)),
                          "noop": bool(self.attr(n, "noop_with_empty_axes", 0))}, [n.input[0]])

    def op_ReduceSum(self, n: Any) -> None:
        self._reduce(n, 13)  # axes became an input at opset 13 for ReduceSum, at 18 for the others

    def op_ReduceL2(self, n: Any) -> None:
        self._reduce(n, 18)

    def op_Expand(self, n: Any) -> None:
        if self.is_const(n.input[1]):
            self.generic(n, {"shape": self.ints(self.consts[n.input[1]])}, [n.input[0]])
        else:  # a run-time shape (e.g. from Shape of the batch)
            self.generic(n, {"shape": None})

    def op_Softmax(self, n: Any) -> None:
        legacy = self.opset < 13
        self.generic(n, {"axis": int(self.attr(n, "axis", 1 if legacy else -1)), "legacy": legacy})

    def op_LogSoftmax(self, n: Any) -> None:
        legacy = self.opset < 13
        self.generic(n, {"axis": int(self.attr(n, "axis", 1 if legacy else -1)), "legacy": legacy, "log": True})

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
        # Half-precision weights are imported as float32 (see GraphBuilder.tensor), so a cast to half precision
        # (how fp16 exports with float32 inputs begin) computes in float32 too.
        dtype = torch.float32 if to in _HALF else ONNX_TO_TORCH_DTYPE[to]
        self.generic(n, {"dtype": dtype})

    def _str_attr(self, n: Any, key: str, default: str) -> str:
        v = self.attr(n, key, default)
        return v.decode() if isinstance(v, bytes) else str(v)

    def op_Resize(self, n: Any) -> None:
        mode = self._str_attr(n, "mode", "nearest")
        if mode not in ("nearest", "linear"):
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} uses Resize mode {mode!r}; the "
                             f"importer runs 'nearest' and 'linear' (re-export with one of those)")
        attrs: dict[str, Any] = {"mode": mode, "scales": None, "sizes": None, "sizes_input": None, "axes": None}
        inputs = [n.input[0]]
        if self.opset < 11 or n.op_type == "Upsample":  # Resize-10 / Upsample-9: (X, scales), asymmetric
            attrs.update(coord="asymmetric", nearest_mode="simple")
            attrs["scales"] = [float(v) for v in self.const(n, 1, "scales").reshape(-1).tolist()]  # type: ignore
        else:
            coord = self._str_attr(n, "coordinate_transformation_mode", "half_pixel")
            if coord not in COORD_MODES:
                raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} uses coordinate transformation "
                                 f"{coord!r}; supported: {', '.join(COORD_MODES)}")
            nearest = self._str_attr(n, "nearest_mode", "round_prefer_floor")
            if nearest not in NEAREST_MODES:
                raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} uses nearest_mode {nearest!r}")
            if int(self.attr(n, "antialias", 0)) or self._str_attr(n, "keep_aspect_ratio_policy",
                                                                     "stretch") != "stretch":
                raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} uses antialias or a "
                                 f"keep_aspect_ratio_policy; only plain ('stretch', no antialias) resizing is read")
            axes = self.attr(n, "axes", None)
            attrs.update(coord=coord, nearest_mode=nearest, axes=None if axes is None else [int(v) for v in axes])
            scales = self.const(n, 2, "scales")
            if scales is not None and scales.numel() > 0:
                attrs["scales"] = [float(v) for v in scales.reshape(-1).tolist()]
            elif len(n.input) > 3 and n.input[3]:
                size_name = n.input[3]
                if size_name in self.runtime:  # sizes computed from another tensor's shape at run time
                    attrs["sizes_input"] = 1
                    inputs.append(size_name)
                else:
                    attrs["sizes"] = self.ints(self.const(n, 3, "sizes"))
            if attrs["scales"] is None and attrs["sizes"] is None and attrs["sizes_input"] is None:
                raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} gives neither scales nor sizes")
        self.generic(n, attrs, inputs)

    op_Upsample = op_Resize

    def op_Split(self, n: Any) -> None:
        if self.opset < 13:
            split = self.attr(n, "split", None)
            split = None if split is None else [int(v) for v in split]
        else:
            split = self.ints(self.const(n, 1, "split"))
        self.generic(n, {"axis": int(self.attr(n, "axis", 0)), "split": split or None,
                         "num_outputs": len(n.output)}, [n.input[0]])
