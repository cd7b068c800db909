"""Size and entropy statistics of a packed container: each tensor's share of its stream, bits per weight against
the order-0 bound, and the part spent on tables (the coders' ``model_bytes``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.entropy.coders import model_bytes, order0_entropy
from pipeline.entropy.container.items import Item, Stream
from pipeline.entropy.grouping import plane_histograms


def apportion(items: list[Item], st: Stream) -> list[float]:
    """A stream's coded bits split over its members by their cross-entropy under the stream's pooled statistics.

    A pooled stream codes every member with one table, so no member has a coded size of its own; each member's share
    of the table-driven code length, -sum(log2 q(symbol)) per byte plane, is what the coder spends on it (exactly, up
    to the table and the final state). Members with zero information share by size.
    """
    bits = 8.0 * len(st.payload)
    if len(st.members) == 1:
        return [bits]
    size = items[st.members[0]].itemsize if len({items[i].itemsize for i in st.members}) == 1 else 1
    h = [plane_histograms(items[i].raw, size) for i in st.members]
    pooled = np.sum(h, axis=0).astype(np.float64)
    with np.errstate(divide="ignore"):
        cost = np.where(pooled > 0, np.log2(pooled.sum(axis=1, keepdims=True)) - np.log2(np.maximum(pooled, 1)), 0.0)
    ce = np.array([float((hi * cost).sum()) for hi in h])
    share = ce / ce.sum() if ce.sum() > 0 else np.array([len(items[i].raw) for i in st.members], float) / st.nbytes
    return list(bits * share)


def container_stats(items: list[Item], streams: list[Stream], weights: set[str]) -> dict[str, Any]:
    """Statistics of ``items`` (item 0 = the graph) coded as ``streams``; ``weights``: the 8-bit weight tensors.

    Returns ``{"tensors", "streams", "weight_numel", "total_bits_per_weight", "order0_bits_per_weight",
    "table_bits_per_weight", "coders_used"}`` (see ``pack_onnx``).
    """
    share: dict[int, tuple[int, float]] = {}
    table_bytes = []
    for j, st in enumerate(streams):
        table_bytes.append(model_bytes(st.coder, st.payload, b"".join(items[i].raw for i in st.members)))
        for i, b in zip(st.members, apportion(items, st)):
            share[i] = (j, b)
    tensors = []
    w_bits = w_h = w_table = 0.0
    w_numel = 0
    for i, it in enumerate(items[1:], start=1):
        numel = int(it.arr.size)
        j, bits = share[i]
        h = order0_entropy(it.raw) if it.itemsize == 1 else float("nan")
        is_w = it.name in weights
        tensors.append({"name": it.name, "dtype": it.arr.dtype.name, "stored_dtype": it.stored.dtype.name,
                        "numel": numel, "stream": j, "coder": streams[j].coder.name, "bytes": round(bits / 8.0, 3),
                        "bits_per_weight": bits / numel if numel else 0.0, "entropy_bits_per_symbol": h,
                        "is_weight": is_w})
        if is_w:
            w_bits += bits
            w_numel += numel
            w_h += h * numel
            # The stream's model bytes, split like its payload (a tensor alone in its stream pays its whole table).
            st_bits = 8.0 * len(streams[j].payload)
            w_table += 8.0 * table_bytes[j] * (bits / st_bits if st_bits else 0.0)
    return {
        "tensors": tensors,
        "streams": [{"coder": st.coder.name, "records": len(st.members), "nbytes": st.nbytes,
                     "bytes": len(st.payload), "table_bytes": tb} for st, tb in zip(streams, table_bytes)],
        "weight_numel": w_numel,
        "total_bits_per_weight": w_bits / w_numel if w_numel else float("nan"),
        "order0_bits_per_weight": w_h / w_numel if w_numel else float("nan"),
        "table_bits_per_weight": w_table / w_numel if w_numel else float("nan"),
        "coders_used": sorted({st.coder.name for st in streams}),
    }
