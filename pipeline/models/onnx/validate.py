"""File safety for ONNX models from outside the pipeline: parse, domains, external data, size caps, finite weights.

Every way a model enters the pipeline (the torch importer, the ONNX Runtime graph fallback, model probing) goes
through :func:`check_onnx_file` first, so a file that reads outside its folder, needs a custom-op library or does not
pass the ONNX checker is refused before anything runs it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from pipeline.errors import InputError, NumericalError
from pipeline.validate_args import check_input_file

__all__ = ["DEFAULT_DOMAINS", "MAX_PROTO_BYTES", "all_tensors", "check_finite_weights", "check_onnx_file"]

# Protobuf cannot serialise or parse a single message of 2 GiB or more; larger models must keep their weights in
# external data files, which the path-based checker and loader handle.
MAX_PROTO_BYTES = 2**31 - 1
DEFAULT_DOMAINS = ("", "ai.onnx")


def all_tensors(model: Any) -> list[tuple[str, Any]]:
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
    p = check_input_file(path, "ONNX model", "pass the path of an .onnx file")
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

    custom = sorted({n.domain for n in model.graph.node if n.domain not in DEFAULT_DOMAINS}
                    | {f.domain for f in model.functions if f.domain not in DEFAULT_DOMAINS})
    if custom:
        users = [f"{n.op_type} ({n.domain})" for n in model.graph.node if n.domain in custom][:8]
        raise InputError(
            f"ONNX model {str(path)!r} uses custom-op domain(s) {', '.join(repr(d) for d in custom)} "
            f"(nodes: {', '.join(users)}); custom operators need native libraries that are never loaded here. "
            f"Re-export the model with standard ONNX operators only"
        )

    total = size
    seen_files: set[str] = set()
    for name, t in all_tensors(model):
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


def check_finite_weights(model: Any, path: str) -> None:
    """Raise NumericalError naming the first initializer/constant of a loaded ``ModelProto`` that holds NaN/Inf."""
    for name, t in all_tensors(model):
        if t.data_type not in (1, 10, 11, 16):  # float, float16, double, bfloat16
            continue
        arr = numpy_helper.to_array(t)
        if not np.isfinite(np.asarray(arr, dtype=np.float64)).all():
            bad = int((~np.isfinite(np.asarray(arr, dtype=np.float64))).sum())
            raise NumericalError(f"ONNX model {path!r}: tensor {name!r} contains {bad} NaN/Inf value(s); the "
                                 f"model's weights are corrupt - re-export it from a healthy checkpoint")
