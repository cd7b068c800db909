"""Shared test material for the LRDC container: an initializer-echo ONNX model and the hostile header edits that
both the Python reader (tests/entropy) and the native decoder (tests/native) must reject."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipeline.entropy.container import GRAPH_KEY


def identity_model(inits: dict[str, np.ndarray], path: Path, dq: dict[str, tuple[str, str]] | None = None) -> Path:
    """Save a model whose outputs are its initializers (Identity), plus DequantizeLinear nodes {out: (q, scale)}."""
    nodes = [helper.make_node("Identity", [k], [k + "_out"]) for k in inits]
    outs = [helper.make_tensor_value_info(k + "_out", helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for k, v in inits.items()]
    for o, (q, sc) in (dq or {}).items():
        nodes.append(helper.make_node("DequantizeLinear", [q, sc], [o], axis=0))
        outs.append(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, inits[q].shape))
    graph = helper.make_graph(nodes, "g", [], outs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# Edits that read_container cannot see (the header is consistent in itself): only rebuilding the graph rejects them.
GRAPH_LEVEL = frozenset({"ghost name", "dtype disagrees with graph"})


def header_mutations(header: dict) -> dict[str, dict]:
    """Hostile edits of the on-disk (column form) header, keyed by what each breaks; every one must be rejected."""
    def m(f: Callable[[dict], Any]) -> dict:
        h = copy.deepcopy(header)
        f(h)
        return h

    rec, st = "records", "streams"
    t1 = header[rec]["name"][1]
    last = max(range(len(header[rec]["start"])), key=lambda i: header[rec]["start"][i])
    return {
        "unknown header field": m(lambda h: h.update(extra=1)),
        "missing header field": m(lambda h: h.pop("producer")),
        "unknown record column": m(lambda h: h[rec].update(bits=[4] * len(h[rec]["name"]))),
        "missing record column": m(lambda h: h[rec].pop("crc32")),
        "unknown stream column": m(lambda h: h[st].update(bits=[4] * len(h[st]["coder"]))),
        "ragged columns": m(lambda h: h[rec]["crc32"].pop()),
        "records not columns": m(lambda h: h.update(records=[{"name": "x"}])),
        "offsets not contiguous": m(lambda h: h[st]["offset"].__setitem__(1, h[st]["offset"][1] + 1)),
        "record start not contiguous": m(lambda h: h[rec]["start"].__setitem__(last, h[rec]["start"][last] + 1)),
        "record in a missing stream": m(lambda h: h[rec]["stream"].__setitem__(1, len(h[st]["coder"]))),
        "stream nbytes != its records": m(lambda h: h[st]["nbytes"].__setitem__(1, h[st]["nbytes"][1] + 1)),
        "unused stream": m(lambda h: [h[st][k].append(0) for k in h[st]]),
        "no streams": m(lambda h: [h[st][k].clear() for k in h[st]]),
        "graph not first": m(lambda h: h[rec]["name"].__setitem__(0, "g")),
        "nbytes != prod(shape)": m(lambda h: h[rec]["shape"].__setitem__(2, [3, 99])),
        "duplicate names": m(lambda h: h[rec]["name"].__setitem__(2, t1)),
        "unknown coder": m(lambda h: h[st].update(coder=[7] * len(h[st]["coder"]))),
        "crc mismatch": m(lambda h: h[rec]["crc32"].__setitem__(3, (h[rec]["crc32"][3] + 1) % 2**32)),
        "bool as int": m(lambda h: h[rec]["start"].__setitem__(1, False)),
        "bad dtype": m(lambda h: h[rec]["dtype"].__setitem__(1, "object")),
        "bad narrowing": m(lambda h: h[rec]["stored_dtype"].__setitem__(1, "int64")),
        "graph not uint8": m(lambda h: h[rec]["dtype"].__setitem__(0, "float32")),
        "reserved name": m(lambda h: h[rec]["name"].__setitem__(1, GRAPH_KEY)),
        "negative length": m(lambda h: h[st]["length"].__setitem__(0, -1)),
        "too many dims": m(lambda h: h[rec]["shape"].__setitem__(1, [1] * 40)),
        "wrong version": m(lambda h: h.update(version=4)),
        "float version": m(lambda h: h.update(version=3.5)),
        "zstd level out of range": m(lambda h: h.update(zstd_level=23)),
        "producer not a string": m(lambda h: h.update(producer=5)),
        "producer too long": m(lambda h: h.update(producer="x" * 1025)),
        "name too long": m(lambda h: h[rec]["name"].__setitem__(1, "n" * 4097)),
        "empty name": m(lambda h: h[rec]["name"].__setitem__(1, "")),
        "crc32 too large": m(lambda h: h[rec]["crc32"].__setitem__(1, 2**32)),
        "huge int": m(lambda h: h[rec]["start"].__setitem__(1, 2**70)),
        "shape entry too large": m(lambda h: h[rec]["shape"].__setitem__(1, [2**31 + 1])),
        "coder out of range": m(lambda h: h[st]["coder"].__setitem__(0, 256)),
        "ghost name": m(lambda h: h[rec]["name"].__setitem__(1, "ghost")),
        "dtype disagrees with graph": m(lambda h: h[rec]["dtype"].__setitem__(
            1, "uint8" if h[rec]["dtype"][1] == "int8" else "int8")),
    }
