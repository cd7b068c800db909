"""An ONNX model as LRDC records and back: the graph record (the ModelProto with moved tensors' data stripped) and
the tensors; :func:`unpack_to_onnx` rebuilds the runnable model from a container.

Every initializer of a type in ``ONNX_TYPES`` becomes a record, except non-weight initializers of at most
``INLINE_MAX_BYTES`` bytes (activation scales and zero points), which stay inside the graph record; types outside the
table (strings, bfloat16, 4-bit...) stay in the graph too. ``onnx`` (~1.7 s to import) is imported where it is used,
so reading a container does not pay for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline.artifacts import atomic_write_bytes
from pipeline.entropy.container.format import GRAPH_KEY, MAX_EXPANSION, MAX_TOTAL_BYTES, ONNX_TYPES, le
from pipeline.entropy.container.read import read_container
from pipeline.errors import ContainerError, InputError

INLINE_MAX_BYTES = 16  # smaller non-weight initializers stay inside the graph record (see split_model)


def load_onnx(path: Path) -> Any:
    """A self-contained ONNX model that passes ``onnx.checker`` (full check), or InputError saying why not."""
    import onnx

    if not path.is_file():
        raise InputError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several unrelated types on garbage input
        raise InputError(f"{path} is not a readable ONNX model: {e}") from None
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise InputError(f"{path}: initializer {t.name!r} uses external data; the LRDC packer needs a "
                             "self-contained model (load it with its data and save it as one file)")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises ValidationError/InferenceError variants
        raise InputError(f"{path} fails onnx.checker: {e}") from None
    return model


def split_model(model: Any, weights: set[str] = frozenset()) -> tuple[bytes, list[tuple[str, np.ndarray]], list[str]]:
    """Strip movable initializers' data out of ``model``; return (graph bytes, [(name, array)], kept-inline names).

    Initializers of at most ``INLINE_MAX_BYTES`` that are not in ``weights`` (activation scales and zero points:
    scalars and short vectors) stay in the graph record: a record costs ~60 bytes of header and ~3 us of reading
    for a few bytes of data, while inside the graph they are covered by its zstd coding and its CRC32.
    """
    from onnx import numpy_helper

    moved: list[tuple[str, np.ndarray]] = []
    inline: list[str] = []
    by_type = {v: k for k, v in ONNX_TYPES.items()}
    names = [t.name for t in model.graph.initializer]
    if len(set(names)) != len(names):
        raise InputError("ONNX model has duplicate initializer names; cannot pack it unambiguously")
    for t in model.graph.initializer:
        if t.data_type not in by_type or t.name == GRAPH_KEY:
            inline.append(t.name)
            continue
        arr = numpy_helper.to_array(t)
        if arr.dtype.name != by_type[t.data_type]:
            inline.append(t.name)
            continue
        if arr.nbytes <= INLINE_MAX_BYTES and t.name not in weights:
            continue
        moved.append((t.name, np.array(arr, order="C", copy=True)))  # keeps 0-d shape
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            t.ClearField(field)
    return model.SerializeToString(), moved, inline


def join_model(graph_bytes: bytes, arrays: dict[str, np.ndarray], records: Iterable[dict[str, Any]]) -> Any:
    """The ModelProto of ``graph_bytes`` with each record's array put back into its (emptied) initializer."""
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(graph_bytes)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ContainerError(f"LRDC graph record is not an ONNX ModelProto: {e}") from None
    inits = {t.name: t for t in model.graph.initializer}
    for r in records:
        t = inits.get(r["name"])
        if t is None:
            raise ContainerError(f"LRDC tensor {r['name']!r} has no matching initializer in the graph")
        if t.data_type != ONNX_TYPES[r["dtype"]] or list(t.dims) != r["shape"]:
            raise ContainerError(f"LRDC tensor {r['name']!r}: dtype/shape {r['dtype']}{r['shape']} disagree with the "
                                 f"graph's initializer (type {t.data_type}, dims {list(t.dims)})")
        if t.HasField("raw_data") or len(t.float_data) or len(t.int32_data) or len(t.int64_data):
            raise ContainerError(f"LRDC tensor {r['name']!r} is stored twice (graph initializer still has data)")
        arr = arrays[r["name"]]
        t.raw_data = arr.astype(le(arr.dtype.name), copy=False).tobytes()
    return model


def weight_tensor_names(model: Any) -> set[str]:
    """8-bit initializers that are the quantized input of a DequantizeLinear (i.e. int8/uint8 weights)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in inits:
            if inits[node.input[0]].data_type in (2, 3):
                out.add(node.input[0])
    return out


def unpack_to_onnx(container_path: str | Path, out_path: str | Path, max_total_bytes: int = MAX_TOTAL_BYTES,
                   max_expansion: int = MAX_EXPANSION) -> Path:
    """Rebuild the runnable ONNX model from an LRDC container (atomically written to ``out_path``).

    The rebuilt model holds exactly the packed tensors, so ONNX Runtime outputs are identical to the packed model's.
    ``max_total_bytes`` and ``max_expansion`` are the reader's limits (:func:`read_container`).

    Raises:
        ContainerError: the container is invalid, or its graph and tensors disagree.
    """
    import onnx

    header, arrays = read_container(container_path, max_total_bytes, max_expansion)
    model = join_model(arrays[GRAPH_KEY].tobytes(), arrays, header["tensors"])
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx raises several checker error types
        raise ContainerError(f"LRDC container {container_path} rebuilds an invalid ONNX model: {e}") from None
    return atomic_write_bytes(out_path, model.SerializeToString())
