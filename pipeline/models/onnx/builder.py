"""The converter's state and the helpers every op handler uses: build-time constants, symbolic shape values,
the emitted node list and layers, attribute and constant-input readers.

The handlers live in :mod:`.layer_ops` (ops that become ``nn`` layers), :mod:`.op_attrs` (interpreted ops) and
:mod:`.symbolic` (shape arithmetic); :mod:`.convert` puts them together.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Sequence

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from pipeline.errors import InputError
from pipeline.models.onnx.graph_module import Node, OnnxGraphModule
from pipeline.models.onnx.ops import OPS
from pipeline.models.onnx.prepare import MAX_OPSET, MIN_OPSET, default_opset

__all__ = ["MULTI_OUTPUT", "GraphBuilder", "Sym"]

# Ops whose every output is produced (the others' extra outputs, e.g. Dropout's mask, are training-only).
MULTI_OUTPUT = frozenset({"Split"})


@dataclass(frozen=True)
class Sym:
    """A shape value known symbolically: each entry is an int or (tensor name, dim index)."""

    entries: tuple[Any, ...]
    scalar: bool = False


class GraphBuilder:
    """Walks the checked graph once; holds the layers, constants and node specs of an OnnxGraphModule in the making."""

    def __init__(self, model: Any, path: str) -> None:
        self.onnx = onnx
        self.model = model
        self.path = path
        self.g = model.graph
        self.opset = default_opset(model, path)
        if not MIN_OPSET <= self.opset <= MAX_OPSET:  # load_for_import converts files outside the range first
            raise InputError(f"ONNX model {path!r} uses opset {self.opset}; the importer reads opsets {MIN_OPSET}-"
                             f"{MAX_OPSET}; convert it with onnx.version_converter.convert_version")
        # Weights stored in half precision become float32 parameters (torch layers train in float32); listed here
        # so that the import can say so.
        self.fp16_weights: list[str] = []
        self.consts: dict[str, torch.Tensor] = {}
        self.syms: dict[str, Sym] = {}
        self.runtime: set[str] = set()
        self.nodes: list[Node] = []
        self.layers: dict[str, nn.Module] = {}
        # Class attributes and the instance attributes every nn.Module has ("training", "_modules", ...) are taken.
        self.used_names: set[str] = set(dir(OnnxGraphModule)) | set(vars(nn.Module()))
        self.ranks = self.infer_ranks()
        self.linear_of: dict[str, int] = {}  # MatMul output value -> index in self.nodes (for bias fusion)
        self.consumers: dict[str, int] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in self.g.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1

    def infer_ranks(self) -> dict[str, int]:
        # Ranks (not sizes) are all the converter needs from shape inference: Shape() entry counts, BN 1d vs 2d.
        try:
            inferred = self.onnx.shape_inference.infer_shapes(self.model)
        except Exception:
            inferred = self.model
        ranks: dict[str, int] = {}
        g = inferred.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                ranks[vi.name] = len(tt.shape.dim)
        return ranks

    def unique_name(self, raw: str, fallback: str) -> str:
        """A Python identifier derived from an ONNX node/tensor name, unique on the root module."""
        name = re.sub(r"\W", "_", raw, flags=re.ASCII)
        name = re.sub(r"_+", "_", name).strip("_")
        if not name:
            name = fallback
        if name[0].isdigit():
            name = "n" + name
        base, k = name, 2
        while name in self.used_names:
            name = f"{base}_{k}"
            k += 1
        self.used_names.add(name)
        return name

    def node_label(self, n: Any) -> str:
        return f"{n.op_type} node {n.name or '(unnamed)'!r}"

    def is_const(self, name: str) -> bool:
        return bool(name) and name in self.consts

    def const(self, n: Any, idx: int, what: str) -> torch.Tensor | None:
        """Input ``idx`` of node ``n`` as a build-time constant (None when absent); error when it is computed."""
        if idx >= len(n.input) or not n.input[idx]:
            return None
        name = n.input[idx]
        if name in self.consts:
            return self.consts[name]
        if name in self.syms and all(isinstance(e, int) for e in self.syms[name].entries):
            s = self.syms[name]
            t = torch.tensor(list(s.entries), dtype=torch.int64)
            return t.reshape(()) if s.scalar else t
        raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} needs its {what} ({name!r}) to be a "
                         f"constant, but it is computed at run time; simplify the model with onnxsim first")

    def ints(self, t: torch.Tensor | None) -> list[int] | None:
        return None if t is None else [int(v) for v in t.reshape(-1).tolist()]

    def attr(self, n: Any, key: str, default: Any = None) -> Any:
        for a in n.attribute:
            if a.name == key:
                return self.onnx.helper.get_attribute_value(a)
        return default

    def first_use(self, name: str) -> tuple[int, str]:
        for i, nd in enumerate(self.nodes):
            if name in nd.inputs:
                return (i, name)
        return (len(self.nodes), name)

    def with_release(self, outputs: list[str]) -> list[Node]:
        last: dict[str, int] = {}
        for i, nd in enumerate(self.nodes):
            for v in nd.inputs:
                if v:
                    last[v] = i
        keep = set(outputs) | set(self.consts)
        release: dict[int, list[str]] = {}
        for v, i in last.items():
            if v not in keep:
                release.setdefault(i, []).append(v)
        return [dataclasses.replace(nd, release=tuple(sorted(release.get(i, [])))) for i, nd in enumerate(self.nodes)]

    def tensor(self, t: Any) -> torch.Tensor:
        arr = numpy_helper.to_array(t)
        out = torch.from_numpy(arr.copy())
        if out.dtype in (torch.float16, torch.bfloat16):
            self.fp16_weights.append(t.name or "(constant)")
            out = out.float()
        return out

    def emit(self, n: Any, inputs: Sequence[str], attrs: dict[str, Any], op: str | None = None,
              module: str | None = None) -> None:
        op = op or n.op_type
        outputs = tuple(n.output) if op in MULTI_OUTPUT else (n.output[0],)
        self.nodes.append(Node(op=op, name=n.name, inputs=tuple(inputs), outputs=outputs, attrs=attrs,
                               module=module))
        self.runtime.update(outputs)

    def materialize(self, name: str) -> None:
        s = self.syms.pop(name)
        inputs, entries = self.ref_inputs(s.entries)
        self.nodes.append(Node(op="_Materialize", name=f"materialize:{name}", inputs=tuple(inputs),
                               outputs=(name,), attrs={"entries": entries, "scalar": s.scalar}))
        self.runtime.add(name)

    def ref_inputs(self, entries: Sequence[Any], first: Sequence[str] = ()) -> tuple[list[str], tuple[Any, ...]]:
        """Turn (tensor, dim) entries into ("ref", argument position, dim) with the tensors appended as inputs."""
        inputs = list(first)
        out: list[Any] = []
        for e in entries:
            if isinstance(e, tuple):
                if e[0] not in inputs:
                    inputs.append(e[0])
                out.append(("ref", inputs.index(e[0]), e[1]))
            else:
                out.append(int(e))
        return inputs, tuple(out)

    def generic(self, n: Any, attrs: dict[str, Any], inputs: Sequence[str] | None = None) -> None:
        """Emit a run-time node, or fold it when every input is a constant."""
        inputs = list(n.input if inputs is None else inputs)
        if all((not i) or i in self.consts for i in inputs):
            args = [self.consts[i] if i else None for i in inputs]
            with torch.no_grad():
                out = OPS[n.op_type](args, attrs)
            if isinstance(out, tuple):
                for name, value in zip(n.output, out):
                    self.consts[name] = value
            else:
                self.consts[n.output[0]] = out
            return
        self.emit(n, inputs, attrs)

    def constant_value(self, n: Any) -> torch.Tensor:
        for a in n.attribute:
            if a.name == "value":
                return self.tensor(a.t)
            if a.name == "value_float":
                return torch.tensor(a.f, dtype=torch.float32)
            if a.name == "value_floats":
                return torch.tensor(list(a.floats), dtype=torch.float32)
            if a.name == "value_int":
                return torch.tensor(a.i, dtype=torch.int64)
            if a.name == "value_ints":
                return torch.tensor(list(a.ints), dtype=torch.int64)
        raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} has no dense value (sparse or string "
                         f"constants are not supported)")

    def spatial_attrs(self, n: Any, kernel: Sequence[int]) -> dict[str, Any]:
        nd = len(kernel)
        pads = list(self.attr(n, "pads", [0] * (2 * nd)))
        auto = self.attr(n, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        strides = list(self.attr(n, "strides", [1] * nd))
        dilations = list(self.attr(n, "dilations", [1] * nd))
        attrs: dict[str, Any] = {"kernel": list(kernel), "strides": strides, "dilations": dilations,
                                 "auto_pad": None, "pad": [pads[1], pads[3], pads[0], pads[2]]}  # (l, r, t, b)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            if all(s == 1 for s in strides):
                # Stride 1: the SAME padding does not depend on the input size, so it is fixed now.
                totals = [(k - 1) * d for k, d in zip(kernel, dilations)]
                lo = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in totals]
                attrs["pad"] = [lo[1], totals[1] - lo[1], lo[0], totals[0] - lo[0]]
            else:
                attrs["auto_pad"] = auto
        elif auto == "VALID":
            attrs["pad"] = [0, 0, 0, 0]
        return attrs

    def pool_attrs(self, n: Any, kind: str) -> dict[str, Any]:
        kernel = list(self.attr(n, "kernel_shape", []))
        if len(kernel) != 2:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} pools over {len(kernel)} dims; "
                             f"only 2-D pooling is supported")
        a = self.spatial_attrs(n, kernel)
        if kind == "avg" and any(d != 1 for d in a["dilations"]):
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} uses dilated average pooling, which "
                             f"torch does not provide")
        a.update(kind=kind, ceil_mode=bool(self.attr(n, "ceil_mode", 0)),
                 count_include_pad=bool(self.attr(n, "count_include_pad", 0)))
        return a

    def axes(self, n: Any, input_from: int) -> list[int] | None:
        if self.opset >= input_from:
            return self.ints(self.const(n, 1, "axes"))
        axes = self.attr(n, "axes", None)
        return None if axes is None else [int(v) for v in axes]

    def slice_attrs(self, n: Any) -> dict[str, Any]:
        if self.opset < 10:
            starts, ends = list(self.attr(n, "starts", [])), list(self.attr(n, "ends", []))
            axes = list(self.attr(n, "axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts = self.ints(self.const(n, 1, "starts")) or []
            ends = self.ints(self.const(n, 2, "ends")) or []
            axes = self.ints(self.const(n, 3, "axes")) or list(range(len(starts)))
            steps = self.ints(self.const(n, 4, "steps")) or [1] * len(starts)
        if any(s == 0 for s in steps):
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} slices with a zero step")
        return {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
