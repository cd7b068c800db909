"""The operators the importer runs with torch: one ``fn(args, attrs) -> tensor`` per ONNX op, the registry
:data:`OPS` the graph module calls at run time (and the converter calls to fold constant sub-graphs at build time),
and :data:`SUPPORTED_OPS`, the set a file must stay inside to be converted.

Layers with weights (Conv, ConvTranspose, BatchNormalization, Gemm, MatMul with a constant weight,
LayerNormalization) are not here: the converter turns them into ``nn`` modules (:mod:`.graph_module` runs them).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from pipeline.errors import InputError
from pipeline.models.onnx.resize import resize

__all__ = ["ONNX_TO_TORCH_DTYPE", "OPS", "SUPPORTED_OPS", "check_supported", "describe_ops", "same_pads",
           "unsupported_ops"]

SUPPORTED_OPS: frozenset[str] = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Div", "Dropout", "Erf", "Expand", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "GlobalMaxPool",
    "HardSigmoid", "HardSwish", "Identity", "LayerNormalization", "LeakyRelu", "LogSoftmax", "MatMul", "MaxPool", "Mul", "Pad",
    "Pow", "ReduceL2", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice", "Softmax", "Split", "Sqrt",
    "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze", "Upsample",
})

ONNX_TO_TORCH_DTYPE = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}


def same_pads(x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
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
    pad = same_pads(x, k, s, d, a["auto_pad"]) if a.get("auto_pad") else list(a["pad"])  # (l, r, t, b)
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
    fn = torch.log_softmax if a.get("log") else torch.softmax
    axis = a["axis"] + x.dim() if a["axis"] < 0 else a["axis"]
    if not a["legacy"] or axis == x.dim() - 1:
        return fn(x, dim=axis)
    # Opset < 13: (log-)softmax over all dims from `axis` on, flattened together.
    return fn(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)


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


def _reducer(reduce: Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """An ONNX Reduce* op from ``reduce(x, dims, keepdim)``: empty axes reduce every axis unless
    ``noop_with_empty_axes`` (then the input passes through)."""
    def op(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
        x = args[0]
        if not a["axes"]:
            if a["noop"]:
                return x
            return reduce(x, tuple(range(x.dim())), a["keepdims"])
        return reduce(x, tuple(a["axes"]), a["keepdims"])
    return op


_reduce_mean = _reducer(lambda x, d, k: x.mean(dim=d, keepdim=k))
_reduce_sum = _reducer(lambda x, d, k: x.sum(dim=d, keepdim=k))
_reduce_l2 = _reducer(lambda x, d, k: torch.sqrt((x * x).sum(dim=d, keepdim=k)))


def _expand(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    # ONNX Expand broadcasts both ways (a 1 in `shape` keeps the input's size), unlike torch's expand
    shape = a["shape"] if a.get("shape") is not None else [int(v) for v in args[1].reshape(-1).tolist()]
    return args[0].expand(torch.broadcast_shapes(tuple(args[0].shape), tuple(shape)))


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


def _pow(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, y = args
    # ONNX Pow keeps the base's type (a float base with an int exponent stays float).
    return torch.pow(x, y).to(x.dtype) if x.is_floating_point() else torch.pow(x, y)


def _split(args: list[Any], a: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    x = args[0]
    axis = a["axis"] % x.dim()
    if a["split"] is not None:
        return tuple(torch.split(x, list(a["split"]), dim=axis))
    n = a["num_outputs"]
    # Opset 18: when the axis does not divide evenly, every part but the last has ceil(size / n) entries.
    return tuple(torch.split(x, -(-int(x.shape[axis]) // n), dim=axis))


OPS: dict[str, Callable[[list[Any], dict[str, Any]], Any]] = {
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
    "LogSoftmax": _softmax,
    "Pad": _pad,
    "Transpose": _transpose,
    "ReduceMean": _reduce_mean,
    "ReduceSum": _reduce_sum,
    "ReduceL2": _reduce_l2,
    "Expand": _expand,
    "Slice": _slice,
    "Cast": lambda args, a: args[0].to(a["dtype"]),
    "MatMul": lambda args, a: torch.matmul(args[0], args[1]),
    "ConstantOfShape": _constant_of_shape,
    "Pow": _pow,
    "Sqrt": lambda args, a: torch.sqrt(args[0]),
    "Erf": lambda args, a: torch.erf(args[0]),
    "Split": _split,
    "Resize": resize,
    "Upsample": resize,
    "_Materialize": _materialize,
}


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


def check_supported(model: Any, path: str) -> None:
    found = unsupported_ops(model)
    if found:
        listed = describe_ops(found)
        raise InputError(
            f"ONNX model {path!r} uses operators the importer does not support: {listed}. Supported: "
            f"{', '.join(sorted(SUPPORTED_OPS))}. Simplify the model (python -m onnxsim) or re-export it using "
            f"only these operators"
        )
