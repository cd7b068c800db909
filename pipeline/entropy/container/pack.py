"""Writing an LRDC container from an ONNX model: storage forms, the stream plan, coding, assembly, verification.

``pack_onnx`` writes the container atomically, then reads the file back and checks every byte against the source
and that re-encoding the decoded tensors reproduces the file exactly; its statistics come from :mod:`.stats`.
Decode-speed timing is not done here (see ``benchmarks.decode_timing``).
"""
from __future__ import annotations

import zlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import atomic_write_bytes
from pipeline.entropy.coders import CODERS, coder_by_id, encode_auto
from pipeline.entropy.container.format import (GRAPH_KEY, MAX_EXPANSION, MAX_HEADER_BYTES, MAX_TOTAL_BYTES,
                                               RECORD_FIELDS, STREAM_FIELDS, VERSION, canonical, columns, seal)
from pipeline.entropy.container.items import Item, Stream
from pipeline.entropy.container.onnx_io import load_onnx, split_model, weight_tensor_names
from pipeline.entropy.container.read import read_container
from pipeline.entropy.container.stats import container_stats
from pipeline.entropy.grouping import STREAM_RECORD_BYTES, plan_streams
from pipeline.errors import ContainerError, ValidationError


def producer() -> str:
    """The header's ``producer``: the versions of this package and of the coding libraries."""
    parts = []
    for pkg in ("lowrank-deploy", "constriction", "zstandard"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} ?")
    return "; ".join(parts)


def channel_runs(items: list[Item], members: list[int]) -> list[tuple[int, int]]:
    """``(count, length)`` segment runs of a byte stream: each member's output channels (axis 0), or all of it."""
    runs = []
    for i in members:
        a = items[i].arr
        if a.size == 0:
            continue
        runs.append((a.shape[0], a.size // a.shape[0]) if a.ndim >= 2 else (1, a.size))
    return runs


#: the graph record (item 0, always a stream of its own) is zstd-coded at least at this level: it is small (tens to a
#: few hundred KB), so the slow level costs milliseconds, and on a small network the graph is a fifth of the file
GRAPH_ZSTD_LEVEL = 19


def encode_stream(items: list[Item], members: list[int], coder: str | int, zstd_level: int) -> Stream:
    """One coded stream of ``members``' stored bytes (the graph's stream at no less than :data:`GRAPH_ZSTD_LEVEL`)."""
    if members == [0] and 0 < zstd_level < GRAPH_ZSTD_LEVEL:
        zstd_level = GRAPH_ZSTD_LEVEL
    raw = b"".join(items[i].raw for i in members)
    itemsize = items[members[0]].itemsize if len({items[i].itemsize for i in members}) == 1 else 1
    segments = channel_runs(items, members) if itemsize == 1 else None
    if coder == "auto":
        c, payload = encode_auto(raw, zstd_level=zstd_level, itemsize=itemsize, segments=segments)
    else:
        c = coder_by_id(coder) if isinstance(coder, int) else CODERS.get(coder)
        payload = c.encode(raw, level=zstd_level, itemsize=itemsize, segments=segments)
    return Stream(members, c, payload, len(raw))



def assemble(items: list[Item], streams: list[Stream], zstd_level: int, producer: str) -> bytes:
    """Header + payloads + trailer for ``items`` (item 0 = the graph) coded as ``streams`` (in payload order)."""
    where: dict[int, tuple[int, int]] = {}
    heads, off = [], 0
    for j, st in enumerate(streams):
        start = 0
        for i in st.members:
            where[i] = (j, start)
            start += len(items[i].raw)
        heads.append({"coder": st.coder.id, "offset": off, "length": len(st.payload), "nbytes": st.nbytes})
        off += len(st.payload)
    recs = []
    for i, it in enumerate(items):
        j, start = where[i]
        recs.append({"name": it.name, "dtype": it.arr.dtype.name, "stored_dtype": it.stored.dtype.name,
                     "shape": [int(d) for d in it.arr.shape], "stream": j, "start": start, "nbytes": len(it.raw),
                     "crc32": zlib.crc32(it.raw) & 0xFFFFFFFF})
    header = canonical({"format": "LRDC", "version": VERSION, "producer": producer, "zstd_level": int(zstd_level),
                         "streams": columns(heads, STREAM_FIELDS), "records": columns(recs, RECORD_FIELDS)})
    if len(header) > MAX_HEADER_BYTES:
        raise ValidationError(f"container header would be {len(header)} bytes, over the {MAX_HEADER_BYTES} cap")
    return seal(header, b"".join(st.payload for st in streams))



def plan(items: list[Item], coder: str | int, zstd_level: int, pool: bool) -> list[Stream]:
    """Streams for ``items`` (item 0 = graph, always alone), in payload order.

    With ``pool``, :func:`grouping.plan_streams` pools tensors of equal item size; per item size the pooled plan is
    kept only if its coded payloads (plus a per-stream header estimate) are no larger than one stream per tensor, so
    pooling can never make a container bigger than per-tensor coding by more than that estimate's error.
    """
    singles = [encode_stream(items, [i], coder, zstd_level) for i in range(len(items))]
    if not pool or len(items) <= 2:
        return singles
    groups = [[i + 1 for i in g] for g in plan_streams([(it.raw, it.itemsize) for it in items[1:]])]
    chosen = [singles[0]]
    for size in sorted({items[g[0]].itemsize for g in groups}):
        these = [g for g in groups if items[g[0]].itemsize == size]
        pooled = [singles[g[0]] if len(g) == 1 else encode_stream(items, g, coder, zstd_level) for g in these]
        alone = [singles[i] for g in these for i in g]
        cost = [sum(len(st.payload) + STREAM_RECORD_BYTES for st in v) for v in (pooled, alone)]
        chosen += pooled if cost[0] <= cost[1] else alone
    return sorted(chosen, key=lambda st: st.members[0])



def pack_onnx(onnx_path: str | Path, out_path: str | Path, coder: str = "auto", zstd_level: int = 19,
              pool: bool = True, max_total_bytes: int = MAX_TOTAL_BYTES,
              max_expansion: int = MAX_EXPANSION) -> dict[str, Any]:
    """Pack an ONNX model into an LRDC container, verify it, and return size/entropy statistics.

    Every initializer of a supported dtype (int8 weights, scales, zero points, float biases, shapes...) becomes a
    record; the rest of the model (graph, attributes, unsupported initializers) is one more record. Records are coded
    in streams: with ``pool`` (default) tensors with similar symbol statistics share one stream and its table
    (:mod:`pipeline.entropy.grouping`), else every record is a stream of its own. Each stream is coded with ``coder``
    ("raw" | "zstd" | "huffman" | "rans" | "rans16" | "planes" | "auto": the smallest payload, or the smallest fast
    one when a slow coder would save less than 1/128 of it or 64 bytes, see ``coders.encode_auto``). After writing,
    the file is decoded and every byte compared to the source, and the decoded tensors are re-encoded to check the
    bytes are reproduced exactly.

    Args:
        onnx_path: the (typically int8 QDQ) model; must be self-contained and pass ``onnx.checker``.
        out_path: the container to write (atomically).
        coder: coder name or "auto".
        zstd_level: zstd compression level (1..22) for "zstd" and "auto".
        pool: pool tensors into shared streams (False: one stream per record, for comparison).
        max_total_bytes, max_expansion: the reader limits the verification reads with (``read_container``'s; the
            defaults, so that what is packed unpacks with the defaults: raise both here and when unpacking for a
            model beyond them).

    Returns:
        ``{"file", "size_bytes", "onnx_bytes", "tensors": [{"name", "dtype", "stored_dtype", "numel", "stream", "coder",
        "bytes", "bits_per_weight", "entropy_bits_per_symbol", "is_weight"}], "streams": [{"coder", "records", "nbytes",
        "bytes", "table_bytes"}], "total_bits_per_weight", "order0_bits_per_weight", "table_bits_per_weight",
        "weight_numel", "coders_used", "kept_inline"}`` (:func:`.stats.container_stats`). A tensor's ``bytes`` is its
        share of its stream (see ``stats.apportion``; exact for a stream of one). Bits per weight are over the 8-bit
        weight tensors (NaN when the model has none); the order-0 bound is each weight tensor's own empirical
        entropy, so pooled streams are held to the stricter per-tensor bound. Decode speeds: ``benchmarks.decode_timing.time_container``.

    Raises:
        InputError: unreadable/invalid model. ConfigError: unknown coder. ValidationError: verification failed.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if coder != "auto":
        CODERS.get(coder)
    model = load_onnx(onnx_path)
    weights = weight_tensor_names(model)
    graph_bytes, moved, inline = split_model(model, weights)
    items = [Item(GRAPH_KEY, np.frombuffer(graph_bytes, dtype=np.uint8)), *(Item(n, a) for n, a in moved)]
    streams = plan(items, coder, zstd_level, pool)
    data = assemble(items, streams, zstd_level, producer())
    atomic_write_bytes(out_path, data)

    # Verify what is on disk, not what is in memory.
    disk = out_path.read_bytes()
    try:
        header, arrays = read_container(disk, max_total_bytes, max_expansion)
    except ContainerError as e:
        raise ValidationError(f"pack_onnx: the container just written to {out_path} does not read back: {e}") from None
    if arrays[GRAPH_KEY].tobytes() != graph_bytes:
        raise ValidationError(f"pack_onnx: graph bytes of {out_path} differ from the source after decoding")
    for name, arr in moved:
        got = arrays[name]
        if got.dtype != arr.dtype or got.shape != arr.shape or got.tobytes() != arr.tobytes():
            raise ValidationError(f"pack_onnx: tensor {name!r} differs from the source after decoding")
    # Re-encode from the decoded arrays alone, with the header's streams and coders: must give the same bytes.
    recs = [header["graph"], *header["tensors"]]
    re_items = [Item(r["name"], arrays[GRAPH_KEY if i == 0 else r["name"]]) for i, r in enumerate(recs)]
    re_streams = [encode_stream(re_items, [i for i, r in enumerate(recs) if r["stream"] == j], sh["coder"],
                                header["zstd_level"]) for j, sh in enumerate(header["streams"])]
    if assemble(re_items, re_streams, header["zstd_level"], header["producer"]) != disk:
        raise ValidationError(f"pack_onnx: decode -> re-encode of {out_path} is not byte-identical")
    return {"file": str(out_path), "size_bytes": len(disk), "onnx_bytes": onnx_path.stat().st_size,
            **container_stats(items, streams, weights), "kept_inline": inline}
