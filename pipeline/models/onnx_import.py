"""Import a pretrained ONNX CNN as an ``nn.Module`` of standard layers (``--model model.onnx``).

Why our own converter: onnx2torch imports torchvision, which does not import here, and the rest of the pipeline
needs *real* ``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm2d`` modules that the factorizer can find with
``named_modules()`` and replace by qualified name. So the importer:

* validates the file first (:func:`check_onnx_file`): existence, protobuf parse, custom-op domains, external-data
  locations (absolute, ``..``, symlinks), size, then ``onnx.checker.check_model(path, full_check=True)``;
* turns every Conv / BatchNormalization / Gemm / MatMul-with-constant-weight into a layer registered as a *direct
  attribute of the root module* named after the ONNX node (sanitised), so ``model.get_submodule(name)`` and
  ``setattr(model, name, replacement)`` both work;
* keeps the graph as a topologically ordered tuple of plain node specs that ``forward`` interprets with torch ops,
  looking each layer up by name *at call time* (so swapped-in ``nn.Sequential`` replacements are used);
* folds constant sub-graphs at build time and evaluates ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``
  chains symbolically (a dimension is "dim i of tensor t"), so Flatten-style reshapes keep a dynamic batch and
  dynamic spatial axes, and a re-export through ``torch.onnx.export`` stays dynamic.

The same file always yields the same module names, structure and state-dict keys: ``pipeline/checkpoint.py``
rebuilds models from ``model.json`` by re-importing the file and loading a state dict into it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import InputError, NumericalError

__all__ = [
    "MAX_PROTO_BYTES",
    "MIN_OPSET",
    "SUPPORTED_OPS",
    "OnnxGraphModule",
    "check_finite_weights",
    "check_onnx_file",
    "onnx_model_info",
    "onnx_to_torch",
    "unsupported_ops",
]

# Protobuf cannot serialise or parse a single message of 2 GiB or more; larger models must keep their weights in
# external data files, which the path-based checker and loader handle.
MAX_PROTO_BYTES = 2**31 - 1
# Older opsets use different attribute layouts for BatchNormalization/Upsample etc.; 9+ covers every exporter
# still in use (the brief asks for 11-18; both attribute and input forms of Clip/Pad/Squeeze/ReduceMean are read).
MIN_OPSET = 9
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Spatial side used only when the model's input side is dynamic and the class count must be found by running it.
_PROBE_SIZE = 224

SUPPORTED_OPS: frozenset[str] = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "Div", "Dropout", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "HardSigmoid", "HardSwish",
    "Identity", "LeakyRelu", "MatMul", "MaxPool", "Mul", "Pad", "ReduceMean", "Relu", "Reshape", "Shape", "Sigmoid",
    "Slice", "Softmax", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
})


# ----------------------------------------------------------------------------------------------------------------
# File validation
# ----------------------------------------------------------------------------------------------------------------

def _all_tensors(model: Any) -> list[tuple[str, Any]]:
    """Every TensorProto in the model (initializers, sparse initializers, Constant/attribute tensors, subgraphs),
    each with a name for messages."""
    out: list[tuple[str, Any]] = []

    def visit_graph(g: Any) -> None:
        for t in g.initializer:
            out.append((t.name, t))
        for st in g.sparse_initializer:
            out.append((st.values.name or "sparse_initializer.values", st.values))
            out.append((st.indices.name or "sparse_initializer.indices", st.indices))
        for node in g.node:
            for a in node.attribute:
                label = f"{node.name or node.op_type}.{a.name}"
                if a.HasField("t"):
                    out.append((a.t.name or label, a.t))
                for i, t in enumerate(a.tensors):
                    out.append((t.name or f"{label}[{i}]", t))
                if a.HasField("g"):
                    visit_graph(a.g)
                for sub in a.graphs:
                    visit_graph(sub)

    visit_graph(model.graph)
    return out


def _check_external_location(path: Path, tensor_name: str, tensor: Any) -> int:
    """Validate one external-data reference; returns the referenced file's size.

    Raises:
        InputError: absolute location, a location escaping the model folder, a symlink on the way, a missing file,
            or an offset/length outside the file.
    """
    import onnx

    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    where = f"ONNX model {str(path)!r}: tensor {tensor_name!r} has external data location {loc!r}"
    if not loc:
        raise InputError(f"{where} with no file name; re-save the model with "
                         f"onnx.save(..., save_as_external_data=True)")
    # Absolute paths (POSIX, Windows drive or UNC) would let a model read any file on the machine.
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", loc) or "\x00" in loc:
        raise InputError(f"{where}, which is an absolute path; external data must be a relative path inside the "
                         f"model's folder")
    parts = [p for p in re.split(r"[\\/]+", loc) if p not in ("", ".")]
    if ".." in parts or not parts:
        raise InputError(f"{where}, which escapes the model's folder ('..'); external data must stay inside "
                         f"{str(path.parent)!r}")
    base = path.parent
    cur = base
    for part in parts:
        cur = cur / part
        # A symlink anywhere on the way could point outside the folder (or change between check and read).
        if cur.is_symlink():
            raise InputError(f"{where}, which goes through the symlink {str(cur)!r}; copy the real file into the "
                             f"model's folder instead")
    full = base.joinpath(*parts)
    try:
        full.resolve().relative_to(base.resolve())
    except ValueError:
        raise InputError(f"{where}, which resolves outside the model's folder") from None
    if not full.is_file():
        raise InputError(f"{where}, but {str(full)!r} does not exist; copy the external data file next to the model")
    size = full.stat().st_size
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise InputError(f"{where} with a non-integer offset/length; re-save the model") from None
    if length is None:
        n = 1
        for d in tensor.dims:
            n *= int(d)
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        length = n * itemsize
    if offset < 0 or length < 0 or offset + length > size:
        raise InputError(f"{where} with offset {offset} and length {length}, beyond the end of {str(full)!r} "
                         f"({size} bytes); the external data file is truncated or belongs to another model")
    return size


def check_onnx_file(path: str | os.PathLike[str]) -> Any:
    """Validate an ONNX file from outside the pipeline and load it (external data included).

    Checks, in order: the file exists; it is under the protobuf limit; it parses as an ONNX model; no node uses a
    custom-op domain; every external-data location is relative, stays inside the model's folder, passes through no
    symlink and lies inside its file; ``onnx.checker.check_model(path, full_check=True)`` passes.

    Args:
        path: the ``.onnx`` file.

    Returns:
        The loaded ``onnx.ModelProto`` with external data read into it.

    Raises:
        InputError: with a message naming the file (and the tensor, location, domain or checker failure).
    """
    import onnx
    from onnx import external_data_helper

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"ONNX model {str(path)!r} does not exist (or is not a file); pass the path of an .onnx file")
    size = p.stat().st_size
    if size > MAX_PROTO_BYTES:
        raise InputError(
            f"ONNX model {str(path)!r} is {size / 2**30:.2f} GiB in one protobuf file, over the 2 GiB protobuf "
            f"limit; re-save it with its weights as external data: onnx.save(model, path, "
            f"save_as_external_data=True, location='weights.bin')"
        )
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # DecodeError, RuntimeError from the C++ parser, UnicodeDecodeError, ...
        raise InputError(f"{str(path)!r} is not a valid ONNX model (it does not parse: {type(e).__name__}: "
                         f"{str(e)[:200]}); the file may be truncated or not an ONNX file at all") from e
    if model.ir_version <= 0 or len(model.graph.node) == 0:
        raise InputError(f"{str(path)!r} is not a valid ONNX model (no IR version or an empty graph); the file may "
                         f"be truncated or not an ONNX file at all")

    custom = sorted({n.domain for n in model.graph.node if n.domain not in _DEFAULT_DOMAINS}
                    | {f.domain for f in model.functions if f.domain not in _DEFAULT_DOMAINS})
    if custom:
        users = [f"{n.op_type} ({n.domain})" for n in model.graph.node if n.domain in custom][:8]
        raise InputError(
            f"ONNX model {str(path)!r} uses custom-op domain(s) {', '.join(repr(d) for d in custom)} "
            f"(nodes: {', '.join(users)}); custom operators need native libraries that are never loaded here. "
            f"Re-export the model with standard ONNX operators only"
        )

    total = size
    seen_files: set[str] = set()
    for name, t in _all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            fsize = _check_external_location(p, name, t)
            loc = {e.key: e.value for e in t.external_data}["location"]
            if loc not in seen_files:
                seen_files.add(loc)
                total += fsize

    try:
        # The path form (not the in-memory proto) is what handles external data and models over 2 GiB.
        onnx.checker.check_model(str(p), full_check=True)
    except Exception as e:
        raise InputError(f"{str(path)!r} is not a valid ONNX model: the ONNX checker rejected it "
                         f"({type(e).__name__}: {str(e).strip()[:400]}); re-export it with a current exporter") from e

    if seen_files:
        try:
            external_data_helper.load_external_data_for_model(model, str(p.parent))
        except Exception as e:
            raise InputError(f"ONNX model {str(path)!r}: its external data could not be read ({e})") from e
    return model


# ----------------------------------------------------------------------------------------------------------------
# Graph module
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Node:
    """One interpreted graph step: plain data, so the module deep-copies and pickles."""

    op: str
    name: str
    inputs: tuple[str, ...]          # "" marks an absent optional input
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    module: str | None = None        # attribute name of the layer this node runs, if any
    release: tuple[str, ...] = ()    # values no later node needs (freed to keep memory flat)


class OnnxGraphModule(nn.Module):
    """An imported ONNX graph: standard layers as root attributes plus an interpreted list of node specs.

    Layers (``nn.Conv2d``, ``nn.BatchNorm1d/2d``, ``nn.Linear``) are direct children named after their ONNX nodes,
    so the factorizer can replace one with ``setattr(model, name, new_module)``; :meth:`forward` fetches every
    layer with ``getattr`` at call time. Constants the graph needs at run time are non-persistent buffers: they
    are rebuilt from the ONNX file, so the state dict holds exactly the layers' parameters and BN statistics.
    """

    def __init__(self, input_name: str, output_names: Sequence[str], nodes: Sequence[_Node],
                 layers: dict[str, nn.Module], consts: dict[str, tuple[str, torch.Tensor]], source: str) -> None:
        super().__init__()
        self._input_name = input_name
        self._output_names = tuple(output_names)
        self._nodes = tuple(nodes)
        self._source = source
        for name, layer in layers.items():
            self.add_module(name, layer)
        # value name in the graph -> buffer attribute name
        self._const_buffers: dict[str, str] = {}
        for value_name, (buf_name, tensor) in consts.items():
            self.register_buffer(buf_name, tensor, persistent=False)
            self._const_buffers[value_name] = buf_name

    @property
    def graph_nodes(self) -> tuple[_Node, ...]:
        """The interpreted node specs in execution order."""
        return self._nodes

    def extra_repr(self) -> str:
        return f"source={self._source!r}, nodes={len(self._nodes)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the graph on ``x`` (the model's single input); returns one tensor or a tuple for several outputs."""
        env: dict[str, Any] = {self._input_name: x}
        for value_name, buf_name in self._const_buffers.items():
            env[value_name] = getattr(self, buf_name)
        for node in self._nodes:
            args = [env[n] if n else None for n in node.inputs]
            if node.module is not None:
                out = _run_layer(getattr(self, node.module), node, args)
            else:
                out = _OPS[node.op](args, node.attrs)
            env[node.outputs[0]] = out
            for n in node.release:
                env.pop(n, None)
        outs = tuple(env[n] for n in self._output_names)
        return outs[0] if len(outs) == 1 else outs


def _run_layer(layer: nn.Module, node: _Node, args: list[Any]) -> torch.Tensor:
    x = args[0]
    if node.op == "Conv":
        pad = node.attrs.get("pad")
        if node.attrs.get("auto_pad"):
            pad = _same_pads(x, node.attrs["kernel"], node.attrs["strides"], node.attrs["dilations"],
                             node.attrs["auto_pad"])
        if pad is not None and any(pad):
            x = F.pad(x, pad)
        return layer(x)
    if node.op == "Gemm" and node.attrs.get("transA"):
        x = x.transpose(0, 1)
    return layer(x)


# ----------------------------------------------------------------------------------------------------------------
# Op implementations: fn(args, attrs) -> tensor. Used at run time and for constant folding at build time.
# ----------------------------------------------------------------------------------------------------------------

def _same_pads(x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
               mode: str) -> list[int]:
    """F.pad list (left, right, top, bottom) for ONNX auto_pad SAME_UPPER/SAME_LOWER at this input size."""
    pads: list[int] = []
    for dim, k, s, d in zip((3, 2), kernel[::-1], strides[::-1], dilations[::-1]):
        size = int(x.shape[dim])
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        pads += [small, big] if mode == "SAME_UPPER" else [big, small]
    return pads


def _pool(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    k, s, d = a["kernel"], a["strides"], a["dilations"]
    pad = _same_pads(x, k, s, d, a["auto_pad"]) if a.get("auto_pad") else list(a["pad"])  # (l, r, t, b)
    symmetric = pad[0] == pad[1] and pad[2] == pad[3] and pad[0] <= k[1] // 2 and pad[2] <= k[0] // 2
    if a["kind"] == "max":
        if symmetric:
            return F.max_pool2d(x, k, s, (pad[2], pad[0]), d, ceil_mode=a["ceil_mode"])
        # -inf padding is exactly what ONNX MaxPool's padding means (padded cells never win).
        return F.max_pool2d(F.pad(x, pad, value=-math.inf), k, s, 0, d, ceil_mode=a["ceil_mode"])
    if symmetric:
        return F.avg_pool2d(x, k, s, (pad[2], pad[0]), ceil_mode=a["ceil_mode"],
                            count_include_pad=a["count_include_pad"])
    y = F.avg_pool2d(F.pad(x, pad), k, s, 0, ceil_mode=a["ceil_mode"], count_include_pad=True)
    if a["count_include_pad"] or not any(pad):
        return y
    # Asymmetric padding that must not be counted: divide the window sums by the number of real cells.
    ones = F.pad(torch.ones_like(x[:1, :1]), pad)
    return y / F.avg_pool2d(ones, k, s, 0, ceil_mode=a["ceil_mode"], count_include_pad=True)


def _reshape(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    if a.get("flatten1"):
        return torch.flatten(x, 1)
    if a.get("shape") is None:
        # A shape computed at run time: keep its elements as 0-d tensors (not Python ints) so that tracing for
        # re-export records the computation instead of freezing today's sizes.
        spec: list[Any] = list(args[1].reshape(-1).unbind(0))
    else:
        spec = list(a["shape"])
    shape: list[Any] = []
    for i, v in enumerate(spec):
        if isinstance(v, tuple):  # ("ref", argument position, dim)
            shape.append(args[v[1]].shape[v[2]])
        elif int(v) == 0 and not a.get("allowzero"):
            shape.append(x.shape[i])
        else:
            shape.append(v)
    return x.reshape(shape)


def _materialize(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    vals = [args[v[1]].shape[v[2]] if isinstance(v, tuple) else v for v in a["entries"]]
    # as_tensor + cat rather than torch.tensor(list): while tracing, sizes are tensors and stay dynamic.
    parts = [torch.as_tensor(v, dtype=torch.int64).reshape(1) for v in vals]
    t = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    return t.reshape(()) if a["scalar"] else t


def _flatten(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    axis = a["axis"] + x.dim() if a["axis"] < 0 else a["axis"]
    if axis == 1:
        return torch.flatten(x, 1)
    return x.reshape(int(math.prod(x.shape[:axis])), -1)


def _softmax(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    axis = a["axis"] + x.dim() if a["axis"] < 0 else a["axis"]
    if not a["legacy"] or axis == x.dim() - 1:
        return torch.softmax(x, dim=axis)
    # Opset < 13: softmax over all dims from `axis` on, flattened together.
    return torch.softmax(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)


def _gather(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    data, idx = args[0], args[1].long()
    axis = a["axis"] % data.dim()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    if idx.dim() == 0:
        return data.select(axis, int(idx))
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(*data.shape[:axis], *idx.shape, *data.shape[axis + 1:])


def _unsqueeze(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    rank = x.dim() + len(a["axes"])
    for ax in sorted(ax % rank for ax in a["axes"]):
        x = x.unsqueeze(ax)
    return x


def _squeeze(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    if a["axes"] is None:
        return x.squeeze()
    for ax in sorted((ax % x.dim() for ax in a["axes"]), reverse=True):
        x = x.squeeze(ax)
    return x


def _pad(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    rank = x.dim()
    axes = a["axes"] if a["axes"] is not None else list(range(rank))
    n = len(axes)
    begin = {ax % rank: a["pads"][i] for i, ax in enumerate(axes)}
    end = {ax % rank: a["pads"][n + i] for i, ax in enumerate(axes)}
    first = min((d for d in range(rank) if begin.get(d, 0) or end.get(d, 0)), default=rank)
    pad: list[int] = []
    for d in range(rank - 1, first - 1, -1):  # F.pad lists the last dim first
        pad += [begin.get(d, 0), end.get(d, 0)]
    if not pad:
        return x
    if a["mode"] == "constant":
        return F.pad(x, pad, mode="constant", value=a["value"])
    return F.pad(x, pad, mode=a["mode"])


def _slice(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    index: list[Any] = [slice(None)] * x.dim()
    for st, en, ax, sp in zip(a["starts"], a["ends"], a["axes"], a["steps"]):
        if sp < 0:
            # torch has no negative-step slicing; Python's slice.indices clamps exactly like ONNX Slice does.
            # (torch's own F.pad export builds its pads list this way; it is folded at build time.)
            dim = ax % x.dim()
            start, stop, step = slice(st, en, sp).indices(int(x.shape[dim]))
            x = x.index_select(dim, torch.arange(start, stop, step, dtype=torch.int64, device=x.device))
        else:
            index[ax % x.dim()] = slice(st, en, sp)
    return x[tuple(index)]


def _constant_of_shape(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    shape = [int(v) for v in args[0].reshape(-1).tolist()]
    return torch.full(shape, a["value"].reshape(()).item(), dtype=a["value"].dtype)


def _reduce_mean(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    if not a["axes"]:
        if a["noop"]:
            return x
        return x.mean(dim=tuple(range(x.dim())), keepdim=a["keepdims"])
    return x.mean(dim=tuple(a["axes"]), keepdim=a["keepdims"])


def _div(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, y = args
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")  # ONNX integer division truncates
    return x / y


def _clip(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    lo, hi = a["min"], a["max"]
    if lo == 0.0 and hi == 6.0:
        return F.relu6(args[0])
    return torch.clamp(args[0], lo, hi)


def _hard_sigmoid(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    if math.isclose(a["alpha"], 1.0 / 6.0, rel_tol=1e-6) and math.isclose(a["beta"], 0.5, rel_tol=1e-6):
        return F.hardsigmoid(args[0])
    return torch.clamp(args[0] * a["alpha"] + a["beta"], 0.0, 1.0)


def _shape(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(list(args[0].shape), dtype=torch.int64)[a["start"]:a["end"]]


def _transpose(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    perm = a["perm"] if a["perm"] is not None else list(range(x.dim()))[::-1]
    return x.permute(*perm)


_OPS: dict[str, Callable[[list[Any], dict[str, Any]], torch.Tensor]] = {
    "Add": lambda args, a: args[0] + args[1],
    "Sub": lambda args, a: args[0] - args[1],
    "Mul": lambda args, a: args[0] * args[1],
    "Div": _div,
    "Relu": lambda args, a: F.relu(args[0]),
    "Sigmoid": lambda args, a: torch.sigmoid(args[0]),
    "Tanh": lambda args, a: torch.tanh(args[0]),
    "LeakyRelu": lambda args, a: F.leaky_relu(args[0], a["alpha"]),
    "HardSwish": lambda args, a: F.hardswish(args[0]),
    "HardSigmoid": _hard_sigmoid,
    "Clip": _clip,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": lambda args, a: args[0].mean(dim=tuple(range(2, args[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda args, a: args[0].amax(dim=tuple(range(2, args[0].dim())), keepdim=True),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Concat": lambda args, a: torch.cat([t for t in args if t is not None], dim=a["axis"]),
    "Identity": lambda args, a: args[0],
    "Dropout": lambda args, a: args[0],  # exported for inference: Dropout is the identity
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Softmax": _softmax,
    "Pad": _pad,
    "Transpose": _transpose,
    "ReduceMean": _reduce_mean,
    "Slice": _slice,
    "Cast": lambda args, a: args[0].to(a["dtype"]),
    "MatMul": lambda args, a: torch.matmul(args[0], args[1]),
    "ConstantOfShape": _constant_of_shape,
    "_Materialize": _materialize,
}


# ----------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Sym:
    """A shape value known symbolically: each entry is an int or (tensor name, dim index)."""

    entries: tuple[Any, ...]
    scalar: bool = False


_ONNX_TO_TORCH_DTYPE = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}


class _Converter:
    """Walks the checked graph once and produces the layers, constants and node specs of an OnnxGraphModule."""

    def __init__(self, model: Any, path: str) -> None:
        import onnx

        self.onnx = onnx
        self.model = model
        self.path = path
        self.g = model.graph
        self.opset = self._default_opset()
        self.consts: dict[str, torch.Tensor] = {}
        self.syms: dict[str, _Sym] = {}
        self.runtime: set[str] = set()
        self.nodes: list[_Node] = []
        self.layers: dict[str, nn.Module] = {}
        # Class attributes and the instance attributes every nn.Module has ("training", "_modules", ...) are taken.
        self.used_names: set[str] = set(dir(OnnxGraphModule)) | set(vars(nn.Module()))
        self.ranks = self._infer_ranks()
        self.linear_of: dict[str, int] = {}  # MatMul output value -> index in self.nodes (for bias fusion)
        self.consumers: dict[str, int] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in self.g.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1

    # -- setup ---------------------------------------------------------------------------------------------------
    def _default_opset(self) -> int:
        versions = [o.version for o in self.model.opset_import if o.domain in _DEFAULT_DOMAINS]
        if not versions:
            raise InputError(f"ONNX model {self.path!r} declares no default-domain opset; re-export it")
        v = int(max(versions))
        if v < MIN_OPSET:
            raise InputError(f"ONNX model {self.path!r} uses opset {v}; opset {MIN_OPSET} or newer is supported "
                             f"(11-18 recommended); upgrade it with onnx.version_converter.convert_version")
        return v

    def _infer_ranks(self) -> dict[str, int]:
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

    # -- value helpers -------------------------------------------------------------------------------------------
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

    # -- main loop -----------------------------------------------------------------------------------------------
    def run(self) -> OnnxGraphModule:
        init_names = {t.name for t in self.g.initializer}
        inputs = [i for i in self.g.input if i.name not in init_names]
        if len(inputs) != 1:
            raise InputError(f"ONNX model {self.path!r} has {len(inputs)} graph inputs "
                             f"({', '.join(i.name for i in inputs)}); an image classifier with exactly one input "
                             f"is expected")
        inp = inputs[0]
        elem = inp.type.tensor_type.elem_type
        if elem != self.onnx.TensorProto.FLOAT:
            raise InputError(f"ONNX model {self.path!r}: input {inp.name!r} has element type "
                             f"{self.onnx.TensorProto.DataType.Name(elem)}; a float32 model is expected")
        self.runtime.add(inp.name)
        for t in self.g.initializer:
            self.consts[t.name] = self._tensor(t)
        for n in self.g.node:
            self.convert_node(n)
        # Graph outputs that are constants or symbols still have to come out of forward().
        for o in self.g.output:
            if o.name in self.syms:
                self._materialize(o.name)
        needed_consts = {i for nd in self.nodes for i in nd.inputs if i in self.consts}
        needed_consts |= {o.name for o in self.g.output if o.name in self.consts}
        consts = {}
        for name in sorted(needed_consts, key=self._first_use):
            consts[name] = (self.unique_name("const_" + name, "const"), self.consts[name])
        nodes = self._with_release([o.name for o in self.g.output])
        return OnnxGraphModule(inp.name, [o.name for o in self.g.output], nodes, self.layers, consts, self.path)

    def _first_use(self, name: str) -> tuple[int, str]:
        for i, nd in enumerate(self.nodes):
            if name in nd.inputs:
                return (i, name)
        return (len(self.nodes), name)

    def _with_release(self, outputs: list[str]) -> list[_Node]:
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

    def _tensor(self, t: Any) -> torch.Tensor:
        from onnx import numpy_helper

        arr = numpy_helper.to_array(t)
        return torch.from_numpy(arr.copy())

    def _emit(self, n: Any, inputs: Sequence[str], attrs: dict[str, Any], op: str | None = None,
              module: str | None = None) -> None:
        op = op or n.op_type
        self.nodes.append(_Node(op=op, name=n.name, inputs=tuple(inputs), outputs=(n.output[0],), attrs=attrs,
                                module=module))
        self.runtime.add(n.output[0])

    def _materialize(self, name: str) -> None:
        s = self.syms.pop(name)
        inputs, entries = self._ref_inputs(s.entries)
        self.nodes.append(_Node(op="_Materialize", name=f"materialize:{name}", inputs=tuple(inputs),
                                outputs=(name,), attrs={"entries": entries, "scalar": s.scalar}))
        self.runtime.add(name)

    def _ref_inputs(self, entries: Sequence[Any], first: Sequence[str] = ()) -> tuple[list[str], tuple[Any, ...]]:
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

    def convert_node(self, n: Any) -> None:
        op = n.op_type
        if op == "Constant":
            self.consts[n.output[0]] = self._constant_value(n)
            return
        if self._convert_symbolic(n):
            return
        # Anything still symbolic that reaches a non-shape op is turned into a run-time tensor.
        for i in n.input:
            if i in self.syms:
                self._materialize(i)
        for extra in n.output[1:]:
            if extra and self.consumers.get(extra):
                raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} output {extra!r} is used, but "
                                 f"only the first output of {op} is supported (inference graphs do not use it)")
        handler = getattr(self, f"_op_{op}", None)
        if handler is not None:
            handler(n)
            return
        self._generic(n, {})

    def _generic(self, n: Any, attrs: dict[str, Any], inputs: Sequence[str] | None = None) -> None:
        """Emit a run-time node, or fold it when every input is a constant."""
        inputs = list(n.input if inputs is None else inputs)
        if all((not i) or i in self.consts for i in inputs):
            args = [self.consts[i] if i else None for i in inputs]
            with torch.no_grad():
                self.consts[n.output[0]] = _OPS[n.op_type](args, attrs)
            return
        self._emit(n, inputs, attrs)

    # -- symbolic shape arithmetic -------------------------------------------------------------------------------
    def _sym_or_const_ints(self, name: str) -> _Sym | None:
        if name in self.syms:
            return self.syms[name]
        t = self.consts.get(name)
        if t is not None and not t.is_floating_point() and t.dim() <= 1:
            return _Sym(tuple(int(v) for v in t.reshape(-1).tolist()), scalar=t.dim() == 0)
        return None

    def _set_sym(self, name: str, s: _Sym) -> None:
        if all(isinstance(e, int) for e in s.entries):
            t = torch.tensor(list(s.entries), dtype=torch.int64)
            self.consts[name] = t.reshape(()) if s.scalar else t
        else:
            self.syms[name] = s

    def _convert_symbolic(self, n: Any) -> bool:
        """Evaluate shape arithmetic on (tensor, dim) symbols; True when the node was fully handled."""
        op, ins, out = n.op_type, list(n.input), n.output[0] if n.output else ""
        if op == "Shape" and ins[0] in self.runtime and ins[0] in self.ranks:
            rank = self.ranks[ins[0]]
            start, end = self.attr(n, "start", 0), self.attr(n, "end", rank)
            dims = list(range(rank))[slice(start, end)]
            self._set_sym(out, _Sym(tuple((ins[0], d) for d in dims)))
            return True
        if not any(i in self.syms for i in ins):
            return False
        if op in ("Identity", "Cast") and ins[0] in self.syms:
            if op == "Cast" and self.attr(n, "to") not in (6, 7):
                return False
            self.syms[out] = self.syms[ins[0]]
            return True
        if op == "Gather" and ins[0] in self.syms and self.is_const(ins[1]):
            s, idx = self.syms[ins[0]], self.consts[ins[1]]
            if s.scalar or idx.dim() > 1 or self.attr(n, "axis", 0) not in (0, -1):
                return False
            picks = [s.entries[int(i)] for i in idx.reshape(-1).tolist()]
            self._set_sym(out, _Sym(tuple(picks), scalar=idx.dim() == 0))
            return True
        if op == "Unsqueeze" and ins[0] in self.syms and self.syms[ins[0]].scalar:
            self._set_sym(out, _Sym(self.syms[ins[0]].entries))
            return True
        if op == "Squeeze" and ins[0] in self.syms and len(self.syms[ins[0]].entries) == 1:
            self._set_sym(out, _Sym(self.syms[ins[0]].entries, scalar=True))
            return True
        if op == "Concat" and self.attr(n, "axis") in (0, -1):
            parts = [self._sym_or_const_ints(i) for i in ins if i]
            if any(p is None or p.scalar for p in parts):
                return False
            self._set_sym(out, _Sym(tuple(e for p in parts for e in p.entries)))  # type: ignore[union-attr]
            return True
        if op == "Slice" and ins[0] in self.syms and not self.syms[ins[0]].scalar:
            try:
                a = self._slice_attrs(n)
            except InputError:
                return False
            if a["axes"] not in ([0], [-1]):
                return False
            entries = self.syms[ins[0]].entries[slice(a["starts"][0], a["ends"][0], a["steps"][0])]
            self._set_sym(out, _Sym(tuple(entries)))
            return True
        if op == "Reshape" and ins[1] in self.syms and ins[0] not in self.syms:
            s = self.syms[ins[1]]
            allowzero = bool(self.attr(n, "allowzero", 0))
            if list(s.entries) == [(ins[0], 0), -1]:
                # The x.view(x.size(0), -1) idiom: export it back as a single Flatten.
                self._emit(n, [ins[0]], {"flatten1": True})
                return True
            inputs, entries = self._ref_inputs(s.entries, first=[ins[0]])
            self._emit(n, inputs, {"shape": entries, "allowzero": allowzero})
            return True
        return False

    # -- per-op preparation --------------------------------------------------------------------------------------
    def _constant_value(self, n: Any) -> torch.Tensor:
        for a in n.attribute:
            if a.name == "value":
                return self._tensor(a.t)
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

    def _spatial_attrs(self, n: Any, kernel: Sequence[int]) -> dict[str, Any]:
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

    def _op_Conv(self, n: Any) -> None:
        w = self.const(n, 1, "weight")
        b = self.const(n, 2, "bias")
        if w is None or w.dim() != 4 or n.input[0] not in self.runtime:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} is not a 2-D convolution of a "
                             f"run-time input with a constant 4-D weight; only Conv2d is supported")
        cout, cin_g, kh, kw = (int(v) for v in w.shape)
        groups = int(self.attr(n, "group", 1))
        a = self._spatial_attrs(n, [kh, kw])
        l, r, t, btm = a["pad"]
        symmetric = a["auto_pad"] is None and l == r and t == btm
        conv = nn.Conv2d(cin_g * groups, cout, (kh, kw), stride=tuple(a["strides"]),
                         padding=(t, l) if symmetric else 0, dilation=tuple(a["dilations"]), groups=groups,
                         bias=b is not None)
        with torch.no_grad():
            conv.weight.copy_(w.float())
            if b is not None:
                conv.bias.copy_(b.float().reshape(-1))
        name = self.unique_name(n.name, f"conv_{len(self.nodes)}")
        self.layers[name] = conv
        attrs = {"pad": None if symmetric else a["pad"], "auto_pad": a["auto_pad"], "kernel": [kh, kw],
                 "strides": a["strides"], "dilations": a["dilations"]}
        self._emit(n, [n.input[0]], attrs, module=name)

    def _op_BatchNormalization(self, n: Any) -> None:
        scale, bias, mean, var = (self.const(n, i, w) for i, w in
                                  ((1, "scale"), (2, "bias"), (3, "running mean"), (4, "running variance")))
        if any(v is None for v in (scale, bias, mean, var)):
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} lacks scale/bias/mean/variance")
        c = int(scale.numel())  # type: ignore[union-attr]
        momentum = 1.0 - float(self.attr(n, "momentum", 0.9))  # ONNX weights the running value, torch the new one
        rank = self.ranks.get(n.input[0], 4)
        cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d if rank in (2, 3) else None
        if cls is None:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} normalises a rank-{rank} tensor; "
                             f"only 2-D, 3-D and 4-D inputs are supported")
        bn = cls(c, eps=float(self.attr(n, "epsilon", 1e-5)), momentum=momentum)
        with torch.no_grad():
            bn.weight.copy_(scale.float().reshape(-1))  # type: ignore[union-attr]
            bn.bias.copy_(bias.float().reshape(-1))  # type: ignore[union-attr]
            bn.running_mean.copy_(mean.float().reshape(-1))  # type: ignore[union-attr]
            bn.running_var.copy_(var.float().reshape(-1))  # type: ignore[union-attr]
        name = self.unique_name(n.name, f"batchnorm_{len(self.nodes)}")
        self.layers[name] = bn
        self._emit(n, [n.input[0]], {}, module=name)

    def _op_Gemm(self, n: Any) -> None:
        bmat = self.const(n, 1, "B (weight)")
        c = self.const(n, 2, "C (bias)")
        if bmat is None or bmat.dim() != 2:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} needs a constant 2-D B")
        alpha, beta = float(self.attr(n, "alpha", 1.0)), float(self.attr(n, "beta", 1.0))
        weight = (bmat if self.attr(n, "transB", 0) else bmat.t()).float() * alpha  # Linear wants (out, in)
        out_f, in_f = (int(v) for v in weight.shape)
        bias = None
        if c is not None:
            if c.numel() not in (1, out_f) or (c.dim() == 2 and c.shape[0] != 1):
                raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} has a bias of shape "
                                 f"{tuple(c.shape)}; only a per-output bias (N,) or (1, N) is supported")
            bias = (c.float().reshape(-1) * beta).expand(out_f)
        lin = nn.Linear(in_f, out_f, bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(weight)
            if bias is not None:
                lin.bias.copy_(bias)
        name = self.unique_name(n.name, f"gemm_{len(self.nodes)}")
        self.layers[name] = lin
        self._emit(n, [n.input[0]], {"transA": bool(self.attr(n, "transA", 0))}, module=name)

    def _op_MatMul(self, n: Any) -> None:
        a_name, b_name = n.input[0], n.input[1]
        w = self.consts.get(b_name)
        if a_name in self.runtime and w is not None and w.dim() == 2 and w.is_floating_point():
            lin = nn.Linear(int(w.shape[0]), int(w.shape[1]), bias=False)
            with torch.no_grad():
                lin.weight.copy_(w.t().float())
            name = self.unique_name(n.name, f"matmul_{len(self.nodes)}")
            self.layers[name] = lin
            self._emit(n, [a_name], {}, module=name)
            self.linear_of[n.output[0]] = len(self.nodes) - 1
            return
        self._generic(n, {})

    def _op_Add(self, n: Any) -> None:
        # MatMul + Add(bias) is how some exporters write a Linear: fold the bias into the nn.Linear.
        for x, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            if x in self.linear_of and self.consumers.get(x) == 1 and self.is_const(b):
                idx = self.linear_of[x]
                prev = self.nodes[idx]
                lin = self.layers[prev.module]  # type: ignore[index]
                bias = self.consts[b]
                if bias.is_floating_point() and bias.numel() == lin.out_features and \
                        (bias.dim() == 1 or all(s == 1 for s in bias.shape[:-1])):
                    fused = nn.Linear(lin.in_features, lin.out_features, bias=True)
                    with torch.no_grad():
                        fused.weight.copy_(lin.weight)
                        fused.bias.copy_(bias.float().reshape(-1))
                    self.layers[prev.module] = fused  # type: ignore[index]
                    self.nodes[idx] = dataclasses.replace(prev, outputs=(n.output[0],))
                    del self.linear_of[x]
                    self.runtime.add(n.output[0])
                    return
        self._generic(n, {})

    def _op_Clip(self, n: Any) -> None:
        if self.opset < 11:
            lo, hi = self.attr(n, "min", -math.inf), self.attr(n, "max", math.inf)
        else:
            tlo, thi = self.const(n, 1, "min"), self.const(n, 2, "max")
            lo = float(tlo) if tlo is not None else -math.inf
            hi = float(thi) if thi is not None else math.inf
        self._generic(n, {"min": None if lo == -math.inf else float(lo),
                          "max": None if hi == math.inf else float(hi)}, [n.input[0]])

    def _op_Dropout(self, n: Any) -> None:
        # Only the data input matters for inference; ratio/training_mode constants need no buffers.
        self._generic(n, {}, [n.input[0]])

    def _op_HardSigmoid(self, n: Any) -> None:
        self._generic(n, {"alpha": float(self.attr(n, "alpha", 0.2)), "beta": float(self.attr(n, "beta", 0.5))})

    def _op_LeakyRelu(self, n: Any) -> None:
        self._generic(n, {"alpha": float(self.attr(n, "alpha", 0.01))})

    def _pool_attrs(self, n: Any, kind: str) -> dict[str, Any]:
        kernel = list(self.attr(n, "kernel_shape", []))
        if len(kernel) != 2:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} pools over {len(kernel)} dims; "
                             f"only 2-D pooling is supported")
        a = self._spatial_attrs(n, kernel)
        if kind == "avg" and any(d != 1 for d in a["dilations"]):
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} uses dilated average pooling, which "
                             f"torch does not provide")
        a.update(kind=kind, ceil_mode=bool(self.attr(n, "ceil_mode", 0)),
                 count_include_pad=bool(self.attr(n, "count_include_pad", 0)))
        return a

    def _op_MaxPool(self, n: Any) -> None:
        self._generic(n, self._pool_attrs(n, "max"), [n.input[0]])

    def _op_AveragePool(self, n: Any) -> None:
        self._generic(n, self._pool_attrs(n, "avg"), [n.input[0]])

    def _op_Flatten(self, n: Any) -> None:
        self._generic(n, {"axis": int(self.attr(n, "axis", 1))})

    def _op_Reshape(self, n: Any) -> None:
        allowzero = bool(self.attr(n, "allowzero", 0))
        if self.is_const(n.input[1]):
            shape = self.ints(self.consts[n.input[1]])
            self._generic(n, {"shape": tuple(shape or ()), "allowzero": allowzero}, [n.input[0]])
        else:  # a run-time shape tensor (shape arithmetic beyond what is evaluated symbolically)
            self._generic(n, {"shape": None, "allowzero": allowzero})

    def _op_Concat(self, n: Any) -> None:
        self._generic(n, {"axis": int(self.attr(n, "axis"))})

    def _op_Shape(self, n: Any) -> None:
        self._generic(n, {"start": self.attr(n, "start", 0), "end": self.attr(n, "end", None)})

    def _op_Gather(self, n: Any) -> None:
        self._generic(n, {"axis": int(self.attr(n, "axis", 0))})

    def _axes(self, n: Any, input_from: int) -> list[int] | None:
        if self.opset >= input_from:
            return self.ints(self.const(n, 1, "axes"))
        axes = self.attr(n, "axes", None)
        return None if axes is None else [int(v) for v in axes]

    def _op_Unsqueeze(self, n: Any) -> None:
        axes = self._axes(n, 13)
        if not axes:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} has no axes")
        self._generic(n, {"axes": axes}, [n.input[0]])

    def _op_Squeeze(self, n: Any) -> None:
        self._generic(n, {"axes": self._axes(n, 13)}, [n.input[0]])

    def _op_ReduceMean(self, n: Any) -> None:
        self._generic(n, {"axes": self._axes(n, 18) or [], "keepdims": bool(self.attr(n, "keepdims", 1)),
                          "noop": bool(self.attr(n, "noop_with_empty_axes", 0))}, [n.input[0]])

    def _op_Softmax(self, n: Any) -> None:
        legacy = self.opset < 13
        self._generic(n, {"axis": int(self.attr(n, "axis", 1 if legacy else -1)), "legacy": legacy})

    def _op_Transpose(self, n: Any) -> None:
        perm = self.attr(n, "perm", None)
        self._generic(n, {"perm": None if perm is None else [int(v) for v in perm]})

    def _op_Pad(self, n: Any) -> None:
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
        self._generic(n, {"pads": pads, "value": value, "mode": torch_mode, "axes": axes}, [n.input[0]])

    def _slice_attrs(self, n: Any) -> dict[str, Any]:
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

    def _op_Slice(self, n: Any) -> None:
        self._generic(n, self._slice_attrs(n), [n.input[0]])

    def _op_ConstantOfShape(self, n: Any) -> None:
        value = self.attr(n, "value", None)
        t = self._tensor(value) if value is not None else torch.zeros(1, dtype=torch.float32)
        self._generic(n, {"value": t})

    def _op_Cast(self, n: Any) -> None:
        to = int(self.attr(n, "to"))
        if to not in _ONNX_TO_TORCH_DTYPE:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} casts to unsupported type {to}")
        self._generic(n, {"dtype": _ONNX_TO_TORCH_DTYPE[to]})


def unsupported_ops(model: Any) -> dict[str, list[str]]:
    """Operators of a loaded ``ModelProto`` outside :data:`SUPPORTED_OPS`: ``{op_type: [node names]}`` (sorted)."""
    found: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type not in SUPPORTED_OPS:
            found.setdefault(n.op_type, []).append(n.name or "(unnamed)")
    return dict(sorted(found.items()))


def describe_ops(found: dict[str, list[str]]) -> str:
    """``"Elu (nodes 'a', 'b'); Erf (nodes 'c')"`` for messages (at most three node names per op)."""
    return "; ".join(f"{op} (nodes {', '.join(repr(x) for x in names[:3])}{', ...' if len(names) > 3 else ''})"
                     for op, names in found.items())


def _check_supported(model: Any, path: str) -> None:
    found = unsupported_ops(model)
    if found:
        listed = describe_ops(found)
        raise InputError(
            f"ONNX model {path!r} uses operators the importer does not support: {listed}. Supported: "
            f"{', '.join(sorted(SUPPORTED_OPS))}. Simplify the model (python -m onnxsim) or re-export it using "
            f"only these operators"
        )


def check_finite_weights(model: Any, path: str) -> None:
    """Raise NumericalError naming the first initializer/constant of a loaded ``ModelProto`` that holds NaN/Inf."""
    import numpy as np
    from onnx import numpy_helper

    for name, t in _all_tensors(model):
        if t.data_type not in (1, 10, 11, 16):  # float, float16, double, bfloat16
            continue
        arr = numpy_helper.to_array(t)
        if not np.isfinite(np.asarray(arr, dtype=np.float64)).all():
            bad = int((~np.isfinite(np.asarray(arr, dtype=np.float64))).sum())
            raise NumericalError(f"ONNX model {path!r}: tensor {name!r} contains {bad} NaN/Inf value(s); the "
                                 f"model's weights are corrupt - re-export it from a healthy checkpoint")


def onnx_to_torch(path: str | os.PathLike[str]) -> OnnxGraphModule:
    """Import an ONNX CNN as an :class:`OnnxGraphModule` of standard torch layers.

    Conv -> ``nn.Conv2d`` (groups, strides, dilations, bias; asymmetric padding via ``F.pad``), BatchNormalization ->
    ``nn.BatchNorm2d`` (running statistics loaded), Gemm and MatMul-with-constant-2-D-weight -> ``nn.Linear``
    (a following bias Add is fused). Every other supported op (:data:`SUPPORTED_OPS`) is interpreted with torch ops.

    Args:
        path: the ``.onnx`` file (checked with :func:`check_onnx_file` first).

    Returns:
        The module, in eval mode (BatchNorm uses the file's running statistics until someone calls ``train()``).
        Importing the same file twice gives identical module names, structure and state-dict keys.

    Raises:
        InputError: invalid file (see :func:`check_onnx_file`), unsupported operators (all of them listed), or an
            op configuration the importer cannot express.
        NumericalError: an initializer or constant holds NaN/Inf (the tensor is named).
    """
    spath = str(path)
    model = check_onnx_file(path)
    _check_supported(model, spath)
    check_finite_weights(model, spath)
    module = _Converter(model, spath).run()
    return module.eval()


def onnx_model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Geometry of an ONNX classifier, to check a dataset against it before any work is done.

    Args:
        path: the ``.onnx`` file.

    Returns:
        ``{"num_classes": int, "in_channels": int, "input_size": int | None, "input_name": str}``; ``input_size`` is
        the square input side when the graph fixes it, ``None`` when the spatial axes are dynamic (or not square).

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
        probe = torch.zeros(dims[0] or 1, int(dims[1]), h or _PROBE_SIZE, w or _PROBE_SIZE)
        if unsupported_ops(model):
            from pipeline.models.ort_graph import OrtGraphModel

            net: nn.Module = OrtGraphModel(model.SerializeToString())
        else:
            net = onnx_to_torch(path)
        try:
            with torch.no_grad():
                y = net(probe)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"ONNX model {str(path)!r}: its output does not declare the class count and running it "
                             f"on zeros of shape {tuple(probe.shape)} failed ({type(e).__name__}: {str(e)[:200]}); "
                             f"declare the output shape in the model") from e
        y = y[0] if isinstance(y, tuple) else y
        num_classes = int(y.shape[class_axis])
    return {"num_classes": int(num_classes), "in_channels": int(dims[1]),
            "input_size": h if h is not None and h == w else None, "input_name": inp.name}
