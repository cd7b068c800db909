"""LRDC: the entropy-coded weight container (an ONNX model's graph + its initializers, coded in shared streams).

File layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"LRDC"
    4       2     u16 format version (3)
    6       4     u32 header length H (1 <= H <= 16 MiB), decoded
    10      1     u8 header coder: 0 = raw, 1 = zstd (the packer keeps the smaller)
    11      4     u32 coded header length C (1 <= C)
    15      C     the coded header; decodes (bounded: to exactly H bytes) to canonical JSON, UTF-8 (sorted keys, no
                  whitespace, ASCII only; re-serialising the parsed header must give exactly these bytes, so duplicate
                  keys, NaN or odd spacing are rejected)
    15+C    P     the streams' coded payloads, back to back in header order
    15+C+P  32    sha256 of every byte before it

Version 1 stored the header uncoded, had no huffman / planes coders and a 3-bytes-per-symbol rANS table; version 2
coded every record as a payload of its own (one frequency table per tensor). This reader rejects both with a message
to re-pack.

Header (exact field sets; unknown or missing fields are rejected). Streams and records are stored as columns, one
list per field, all of one length (half the JSON of a list of objects, and ~3x faster to parse and re-serialise on
every read); ``read_container`` hands them back as rows::

    {"format": "LRDC", "version": 3, "producer": str, "zstd_level": int,
     "streams": {"coder": [int], "offset": [int], "length": [int], "nbytes": [int]},      # at least one
     "records": {"name": [str], "dtype": [str], "stored_dtype": [str], "shape": [[int]], "stream": [int],
                 "start": [int], "nbytes": [int], "crc32": [int]}}                      # record 0: the graph
    stream i = {"coder", "offset", "length", "nbytes"} at index i of each stream column; record i likewise.

Record 0 is the graph (named ``__lrdc_graph__``): the ONNX ModelProto with moved initializers' data stripped.

A stream is one coded payload: ``coder`` is an on-disk coder id (:mod:`pipeline.entropy.coders`: 0 raw, 1 zstd,
2 rans, 3 huffman, 4 planes, 5 rans16, 6 rans16ch), ``offset``/``length`` locate the payload relative to the start of the
payload area (sorted, contiguous, covering the area exactly), and it decodes to exactly ``nbytes`` bytes: the stored
bytes of the records that name it, back to back in header order (graph first). So each record's ``start`` is the
sum of the ``nbytes`` of the earlier records of its stream, every stream is used, and the records of a stream fill
it exactly. Pooling tensors into one stream shares one frequency table (:mod:`pipeline.entropy.grouping` plans it);
the packer keeps the graph in a stream of its own.

``dtype`` is the tensor's numpy dtype in the graph; ``stored_dtype`` is what the stream holds for it: the same dtype,
or a *lossless* narrowing chosen by the packer (float32 -> float16 when every value is exactly representable, e.g.
fp16-grid scales; int64/int32 -> int32/int16/int8 when the values fit). Narrowing never rounds, so dequantization
stays bit-exact; fp32 scales that are not fp16-exact stay fp32, and ``auto`` codes them with ``planes``
(sign/exponent and mantissa byte planes coded on their own) when that is smaller.
``nbytes == prod(shape) * itemsize(stored_dtype)``; ``crc32`` is over the record's decoded bytes. Names must be
unique; nothing may follow the trailer. Non-weight initializers of at most ``INLINE_MAX_BYTES`` bytes (activation
scales and zero points) are not records: they stay inside the graph record, covered by its CRC32.

Reading is strict and bounded: every size is checked against the bytes that remain before anything is allocated,
the total decoded size is capped (``max_total_bytes``, default 2 GiB, the protobuf limit of a single ONNX file), and
every decoder is told exactly how many bytes to produce. Any problem raises :class:`ContainerError`.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline.artifacts import atomic_write_bytes
from pipeline.entropy.coders import CODERS, Coder, coder_by_id, encode_auto, model_bytes, order0_entropy
from pipeline.entropy.grouping import STREAM_RECORD_BYTES, plan_streams, plane_histograms
from pipeline.errors import ContainerError, InputError, ValidationError

MAGIC = b"LRDC"
VERSION = 3
MAX_HEADER_BYTES = 16 << 20
MAX_TOTAL_BYTES = 2 << 30  # one ONNX protobuf cannot exceed 2 GiB, so no valid container decodes to more
MAX_NDIM = 32
INLINE_MAX_BYTES = 16  # smaller non-weight initializers stay inside the graph record (see _split_model)
MAX_NAME_CHARS = 4096
DECODE_REPEATS = 3  # pack_onnx reports the median decode speed of this many reads
GRAPH_KEY = "__lrdc_graph__"  # reserved name under which read_container returns the graph bytes
_PREFIX = struct.Struct("<4sHIBI")
_HEADER_CODERS = (0, 1)  # raw, zstd
_HEADER_ZSTD_LEVEL = 19
_TRAILER = 32

_HEADER_FIELDS = {"format", "version", "producer", "zstd_level", "streams", "records"}
_STREAM_FIELDS = {"coder", "offset", "length", "nbytes"}
_RECORD_FIELDS = {"name", "dtype", "stored_dtype", "shape", "stream", "start", "nbytes", "crc32"}
# dtype name -> ONNX TensorProto data type. Types outside this table (strings, bfloat16, 4-bit...) stay in the graph.
_ONNX_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6, "int64": 7, "bool": 9,
               "float16": 10, "float64": 11, "uint32": 12, "uint64": 13}
# Lossless storage narrowings the reader accepts (logical dtype -> allowed stored dtypes).
_NARROWINGS = {"float32": ("float16",), "int64": ("int32", "int16", "int8"), "int32": ("int16", "int8")}
_ITEMSIZE = {name: np.dtype(name).itemsize for name in _ONNX_TYPES}
_DTYPE = {name: np.dtype(name) for name in _ONNX_TYPES}
_DTYPE_LE = {name: (d.newbyteorder("<") if d.itemsize > 1 else d) for name, d in _DTYPE.items()}


# ---------------------------------------------------------------------------------------------------- helpers
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _le(dtype: str) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)


def _producer() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in ("lowrank-deploy", "constriction", "zstandard"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} ?")
    return "; ".join(parts)


def _narrow(arr: np.ndarray) -> np.ndarray:
    """The smallest lossless storage form of ``arr`` (see module docstring); ``arr`` itself when none applies."""
    name = arr.dtype.name
    if name == "float32" and arr.size:
        with np.errstate(over="ignore"):  # values beyond fp16's range become inf and fail the comparison below
            h = arr.astype(np.float16)
        # Bitwise comparison: -0.0, NaN payloads and infinities must survive exactly.
        if np.array_equal(h.astype(np.float32).view(np.uint32), arr.view(np.uint32)):
            return h
    elif name in ("int64", "int32") and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        for cand in _NARROWINGS[name][::-1]:
            info = np.iinfo(cand)
            if info.min <= lo and hi <= info.max:
                return arr.astype(cand)
    return arr


class _Item:
    """One record to store: logical array, its lossless storage form and the stored little-endian bytes."""

    def __init__(self, name: str, arr: np.ndarray) -> None:
        self.name, self.arr = name, arr
        self.stored = _narrow(arr)
        self.raw = self.stored.astype(_le(self.stored.dtype.name), copy=False).tobytes()
        self.itemsize = self.stored.dtype.itemsize


class _Stream:
    """One coded payload: the concatenated stored bytes of ``members`` (item indices, ascending)."""

    def __init__(self, members: list[int], coder: Coder, payload: bytes, nbytes: int) -> None:
        self.members, self.coder, self.payload, self.nbytes = members, coder, payload, nbytes


def _channel_runs(items: list[_Item], members: list[int]) -> list[tuple[int, int]]:
    """``(count, length)`` segment runs of a byte stream: each member's output channels (axis 0), or all of it."""
    runs = []
    for i in members:
        a = items[i].arr
        if a.size == 0:
            continue
        runs.append((a.shape[0], a.size // a.shape[0]) if a.ndim >= 2 else (1, a.size))
    return runs


def _encode_stream(items: list[_Item], members: list[int], coder: str | int, zstd_level: int) -> _Stream:
    raw = b"".join(items[i].raw for i in members)
    itemsize = items[members[0]].itemsize if len({items[i].itemsize for i in members}) == 1 else 1
    segments = _channel_runs(items, members) if itemsize == 1 else None
    if coder == "auto":
        c, payload = encode_auto(raw, zstd_level=zstd_level, itemsize=itemsize, segments=segments)
    else:
        c = coder_by_id(coder) if isinstance(coder, int) else CODERS.get(coder)
        payload = c.encode(raw, level=zstd_level, itemsize=itemsize, segments=segments)
    return _Stream(members, c, payload, len(raw))


def _columns(rows: list[dict[str, Any]], fields: set[str]) -> dict[str, list[Any]]:
    """Rows -> the header's column form: one list per field (half the JSON of rows, ~3x faster to parse)."""
    return {f: [r[f] for r in rows] for f in sorted(fields)}


def _rows(columns: Any, fields: set[str], what: str, at_least: int) -> list[dict[str, Any]]:
    """The header's column form -> rows, after checking its shape: exactly ``fields``, lists of one length."""
    if not isinstance(columns, dict) or columns.keys() != fields:
        got = sorted(columns) if isinstance(columns, dict) else type(columns).__name__
        raise ContainerError(f"LRDC header {what} must be an object with the columns {sorted(fields)}, got {got}")
    cols = [columns[f] for f in sorted(fields)]
    if not all(type(c) is list for c in cols) or len({len(c) for c in cols}) != 1 or len(cols[0]) < at_least:
        raise ContainerError(f"LRDC header {what} columns must be lists of one length (at least {at_least})")
    keys = sorted(fields)
    return [dict(zip(keys, vals)) for vals in zip(*cols)]


def _assemble(items: list[_Item], streams: list[_Stream], zstd_level: int, producer: str) -> bytes:
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
    header = _canonical({"format": "LRDC", "version": VERSION, "producer": producer, "zstd_level": int(zstd_level),
                         "streams": _columns(heads, _STREAM_FIELDS), "records": _columns(recs, _RECORD_FIELDS)})
    if len(header) > MAX_HEADER_BYTES:
        raise ValidationError(f"container header would be {len(header)} bytes, over the {MAX_HEADER_BYTES} cap")
    return _seal(header, b"".join(st.payload for st in streams))


def _seal(header: bytes, payloads: bytes, version: int = VERSION, header_coder: int | None = None) -> bytes:
    """Prefix + coded header + payload area + sha256 (``header_coder`` None: the smaller of raw and zstd)."""
    if header_coder is None:
        z = CODERS.get("zstd").encode(header, level=_HEADER_ZSTD_LEVEL)
        header_coder, coded = (1, z) if len(z) < len(header) else (0, header)
    else:
        coded = coder_by_id(header_coder).encode(header, level=_HEADER_ZSTD_LEVEL)
    body = b"".join([_PREFIX.pack(MAGIC, version, len(header), header_coder, len(coded)), coded, payloads])
    return body + hashlib.sha256(body).digest()


# ---------------------------------------------------------------------------------------------------- reading
def _int(v: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    # bool is an int subclass in Python; JSON true/false must not pass as sizes.
    if type(v) is not int or v < lo or (hi is not None and v > hi):
        raise ContainerError(f"container header: {what} must be an integer in [{lo}, {hi if hi is not None else 'inf'}],"
                             f" got {v!r}")
    return v


def _check_stream(s: Any, where: str) -> dict[str, Any]:
    if not isinstance(s, dict) or s.keys() != _STREAM_FIELDS:
        got = sorted(s) if isinstance(s, dict) else type(s).__name__
        raise ContainerError(f"container header: {where} must be an object with fields {sorted(_STREAM_FIELDS)}, "
                             f"got {got}")
    _int(s["coder"], f"{where} coder", 0, 255)
    for k in ("offset", "length", "nbytes"):
        _int(s[k], f"{where} {k}", 0)
    return s


def _check_record(r: Any, where: str) -> dict[str, Any]:
    # Hot path (one call per record on every read): plain comparisons first, messages built only on failure.
    if not isinstance(r, dict):
        raise ContainerError(f"container header: {where} is not an object")
    if r.keys() != _RECORD_FIELDS:
        keys = set(r)
        extra, missing = sorted(keys - _RECORD_FIELDS), sorted(_RECORD_FIELDS - keys)
        raise ContainerError(f"container header: {where} has unknown fields {extra} / missing fields {missing}")
    name = r["name"]
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS:
        raise ContainerError(f"container header: {where} name must be a non-empty string of <= {MAX_NAME_CHARS} chars")
    dtype, stored = r["dtype"], r["stored_dtype"]
    if type(dtype) is not str or dtype not in _ONNX_TYPES:
        raise ContainerError(f"container header: {where} ({name!r}) has unsupported dtype {dtype!r}")
    if type(stored) is not str or (stored != dtype and stored not in _NARROWINGS.get(dtype, ())):
        raise ContainerError(f"container header: {where} ({name!r}) cannot store {dtype} as {stored!r}")
    shape = r["shape"]
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise ContainerError(f"container header: {where} ({name!r}) shape must be a list of <= {MAX_NDIM} dims")
    for d in shape:
        if type(d) is not int or not 0 <= d <= MAX_TOTAL_BYTES:
            _int(d, f"{where} ({name!r}) shape entry", 0, MAX_TOTAL_BYTES)
    for key in ("stream", "start", "nbytes", "crc32"):
        v = r[key]
        if type(v) is not int or v < 0 or (key == "crc32" and v > 0xFFFFFFFF):
            _int(v, f"{where} {key}", 0, 0xFFFFFFFF if key == "crc32" else None)
    # Python ints: no overflow, whatever the dims.
    expect = math.prod(shape) * _ITEMSIZE[stored]
    if r["nbytes"] != expect:
        raise ContainerError(f"container header: {where} ({name!r}) nbytes {r['nbytes']} != prod({shape}) * "
                             f"itemsize({stored}) = {expect}")
    return r


def _records_look_valid(c: dict[str, list[Any]]) -> bool:
    """Every check of :func:`_check_record`, column by column (the fast path of every read; on False the per-record
    checks run to name the culprit)."""
    names, dtypes, stored, shapes = c["name"], c["dtype"], c["stored_dtype"], c["shape"]
    return (all(type(x) is str and 0 < len(x) <= MAX_NAME_CHARS for x in names)
            and all(type(d) is str and d in _ONNX_TYPES for d in dtypes)
            and all(type(t) is str and (t == d or t in _NARROWINGS.get(d, ())) for d, t in zip(dtypes, stored))
            and all(type(sh) is list and len(sh) <= MAX_NDIM
                    and all(type(x) is int and 0 <= x <= MAX_TOTAL_BYTES for x in sh) for sh in shapes)
            and all(type(v) is int and v >= 0 for k in ("stream", "start", "nbytes", "crc32") for v in c[k])
            and all(v <= 0xFFFFFFFF for v in c["crc32"])
            and all(nb == math.prod(sh) * _ITEMSIZE[t] for nb, sh, t in zip(c["nbytes"], shapes, stored)))


def _parse_prefix(data: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """Validate magic/version/lengths/sha256 and the header; return (header as rows, payload area start)."""
    n = len(data)
    if n < _PREFIX.size + _TRAILER:
        raise ContainerError(f"container is {n} bytes, shorter than the minimal {_PREFIX.size + _TRAILER}; truncated?")
    magic, version = struct.unpack_from("<4sH", data, 0)
    if magic != MAGIC:
        raise ContainerError(f"not an LRDC container (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ContainerError(f"LRDC version {version} is not supported by this reader (supports {VERSION}); "
                             "upgrade lowrank-deploy or re-pack the model")
    _, _, hlen, hcoder, clen = _PREFIX.unpack_from(data, 0)
    if not 1 <= hlen <= MAX_HEADER_BYTES:
        raise ContainerError(f"LRDC header length {hlen} outside 1..{MAX_HEADER_BYTES}")
    if hcoder not in _HEADER_CODERS:
        raise ContainerError(f"LRDC header coder {hcoder} is not one of {_HEADER_CODERS} (raw, zstd)")
    if not 1 <= clen <= n - _TRAILER - _PREFIX.size:
        raise ContainerError(f"LRDC coded header length {clen} outside 1..{n - _PREFIX.size - _TRAILER} (the bytes "
                             "available); truncated file?")
    if hashlib.sha256(data[:n - _TRAILER]).digest() != bytes(data[n - _TRAILER:]):
        raise ContainerError("LRDC sha256 mismatch: the file is corrupt, truncated or was modified")
    try:
        raw = coder_by_id(hcoder).decode(bytes(data[_PREFIX.size:_PREFIX.size + clen]), hlen)
    except ContainerError as e:
        raise ContainerError(f"LRDC header does not decode: {e}") from None
    try:
        header = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ContainerError(f"LRDC header is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise ContainerError("LRDC header is not a JSON object")
    try:
        canon = _canonical(header)
    except (ValueError, RecursionError):
        canon = b""
    if canon != raw:
        raise ContainerError("LRDC header is not canonical JSON (duplicate keys, whitespace or key order)")
    if set(header) != _HEADER_FIELDS:
        raise ContainerError(f"LRDC header fields {sorted(header)} != expected {sorted(_HEADER_FIELDS)}")
    if header["format"] != "LRDC" or header["version"] != version:
        raise ContainerError("LRDC header format/version disagree with the file prefix")
    if not isinstance(header["producer"], str) or len(header["producer"]) > 1024:
        raise ContainerError("LRDC header producer must be a string of <= 1024 chars")
    _int(header["zstd_level"], "zstd_level", -131072, 22)
    streams = [_check_stream(r, f"streams[{j}]")
               for j, r in enumerate(_rows(header["streams"], _STREAM_FIELDS, "streams", 1))]
    records = _rows(header["records"], _RECORD_FIELDS, "records", 1)
    if not _records_look_valid(header["records"]):
        for i, r in enumerate(records):  # the slow path names the first bad record
            _check_record(r, f"records[{i}]")
        raise ContainerError("LRDC header records are invalid")  # not reached: the loop above raises
    if records[0]["name"] != GRAPH_KEY:
        raise ContainerError(f"LRDC record 0 must be the graph, named {GRAPH_KEY!r}")
    if records[0]["dtype"] != "uint8" or records[0]["stored_dtype"] != "uint8" or len(records[0]["shape"]) != 1:
        raise ContainerError("LRDC graph record must be a 1-D uint8 byte string")
    names = [r["name"] for r in records[1:]]
    if len(set(names)) != len(names) or GRAPH_KEY in names:
        dup = sorted({x for x in names if names.count(x) > 1} | ({GRAPH_KEY} & set(names)))
        raise ContainerError(f"LRDC tensor names must be unique and not {GRAPH_KEY!r}; offending: {dup[:5]}")
    start = _PREFIX.size + clen
    area = n - _TRAILER - start
    off = 0
    for j, s in enumerate(streams):
        if s["offset"] != off:
            raise ContainerError(f"LRDC stream {j}: offset {s['offset']} != {off} (payloads must be sorted and "
                                 "contiguous)")
        if s["length"] > area - off:
            raise ContainerError(f"LRDC stream {j}: length {s['length']} runs past the payload area")
        off += s["length"]
    if off != area:
        raise ContainerError(f"LRDC payload area has {area - off} bytes not covered by any stream")
    # Each stream's decoded bytes are exactly its records' bytes, back to back in header order.
    filled = [0] * len(streams)
    used = [False] * len(streams)
    for r in records:
        j = r["stream"]
        if j >= len(streams):
            raise ContainerError(f"LRDC record {r['name']!r}: stream {j} does not exist ({len(streams)} streams)")
        if r["start"] != filled[j]:
            raise ContainerError(f"LRDC record {r['name']!r}: starts at {r['start']} in stream {j}, expected "
                                 f"{filled[j]} (records must tile their stream in header order)")
        filled[j] += r["nbytes"]
        used[j] = True
    for j, s in enumerate(streams):
        if filled[j] != s["nbytes"] or not used[j]:
            raise ContainerError(f"LRDC stream {j}: its records cover {filled[j]} bytes, the stream holds "
                                 f"{s['nbytes']} (or no record uses it)")
    # Callers get the rows: {"streams": [stream, ...], "graph": record, "tensors": [record, ...]}.
    rows = {k: header[k] for k in ("format", "version", "producer", "zstd_level")}
    return {**rows, "streams": streams, "graph": records[0], "tensors": records[1:]}, start


def read_container(path_or_bytes: str | Path | bytes | bytearray | memoryview,
                   max_total_bytes: int = MAX_TOTAL_BYTES) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse and decode an LRDC container strictly.

    Args:
        path_or_bytes: a file path, or the container's bytes.
        max_total_bytes: cap on the sum of decoded tensor sizes (checked before any decoding).

    Returns:
        ``(header, arrays)``: the validated header as rows (``{"format", "version", "producer", "zstd_level",
        "streams": [stream], "graph": record, "tensors": [record]}``), and every tensor by name in its logical dtype
        and shape, plus the graph bytes as a uint8 array under ``GRAPH_KEY``.

    Raises:
        ContainerError: on any problem (corrupt, truncated, modified, unknown version, oversized, bad payload).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    else:
        p = Path(path_or_bytes)
        try:
            size = p.stat().st_size
            if size > max_total_bytes + MAX_HEADER_BYTES + (64 << 20):
                raise ContainerError(f"{p}: {size} bytes is larger than any container this reader accepts")
            data = p.read_bytes()
        except OSError as e:
            raise ContainerError(f"cannot read container {p}: {e}") from None
    header, start = _parse_prefix(data)
    streams = header["streams"]
    total = sum(s["nbytes"] for s in streams)
    if total > max_total_bytes:
        raise ContainerError(f"LRDC tensors would decode to {total} bytes, over the {max_total_bytes} cap")
    decoded = []
    for j, s in enumerate(streams):
        payload = data[start + s["offset"]:start + s["offset"] + s["length"]]
        raw = coder_by_id(s["coder"]).decode(payload, s["nbytes"])
        if len(raw) != s["nbytes"]:  # coders guarantee this; kept as a cheap belt-and-braces check
            raise ContainerError(f"LRDC stream {j} decoded to {len(raw)} bytes, expected {s['nbytes']}")
        decoded.append(bytearray(raw))  # one writable copy per stream: records below are views into it
    arrays: dict[str, np.ndarray] = {}
    for i, r in enumerate([header["graph"], *header["tensors"]]):
        buf, at, size = decoded[r["stream"]], r["start"], r["nbytes"]
        if zlib.crc32(memoryview(buf)[at:at + size]) & 0xFFFFFFFF != r["crc32"]:
            raise ContainerError(f"LRDC record {r['name']!r}: CRC32 mismatch after decoding (corrupt payload)")
        sd = _DTYPE_LE[r["stored_dtype"]]
        stored = np.frombuffer(buf, dtype=sd, count=size // sd.itemsize, offset=at).reshape(r["shape"])
        if r["stored_dtype"] == "bool" and stored.size and stored.view(np.uint8).max() > 1:
            raise ContainerError(f"LRDC record {r['name']!r}: bool tensor holds values other than 0/1")
        # A writable view when the stored form is the logical one in native order and aligned; else a converted copy.
        if r["stored_dtype"] != r["dtype"] or not sd.isnative or at % sd.itemsize:
            stored = stored.astype(_DTYPE[r["dtype"]])
        arrays[GRAPH_KEY if i == 0 else r["name"]] = stored
    return header, arrays


# ---------------------------------------------------------------------------------------------------- ONNX
def _load_onnx(path: Path) -> Any:
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


def _split_model(model: Any, weights: set[str] = frozenset()) -> tuple[bytes, list[tuple[str, np.ndarray]], list[str]]:
    """Strip movable initializers' data out of ``model``; return (graph bytes, [(name, array)], kept-inline names).

    Initializers of at most ``INLINE_MAX_BYTES`` that are not in ``weights`` (activation scales and zero points:
    scalars and short vectors) stay in the graph record: a record costs ~60 bytes of header and ~3 us of reading
    for a few bytes of data, while inside the graph they are covered by its zstd coding and its CRC32.
    """
    from onnx import numpy_helper

    moved: list[tuple[str, np.ndarray]] = []
    inline: list[str] = []
    by_type = {v: k for k, v in _ONNX_TYPES.items()}
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


def _join_model(graph_bytes: bytes, arrays: dict[str, np.ndarray], records: Iterable[dict[str, Any]]) -> Any:
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
        if t.data_type != _ONNX_TYPES[r["dtype"]] or list(t.dims) != r["shape"]:
            raise ContainerError(f"LRDC tensor {r['name']!r}: dtype/shape {r['dtype']}{r['shape']} disagree with the "
                                 f"graph's initializer (type {t.data_type}, dims {list(t.dims)})")
        if t.HasField("raw_data") or len(t.float_data) or len(t.int32_data) or len(t.int64_data):
            raise ContainerError(f"LRDC tensor {r['name']!r} is stored twice (graph initializer still has data)")
        arr = arrays[r["name"]]
        t.raw_data = arr.astype(_le(arr.dtype.name), copy=False).tobytes()
    return model


def _weight_tensor_names(model: Any) -> set[str]:
    """8-bit initializers that are the quantized input of a DequantizeLinear (i.e. int8/uint8 weights)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in inits:
            if inits[node.input[0]].data_type in (2, 3):
                out.add(node.input[0])
    return out


def _plan(items: list[_Item], coder: str | int, zstd_level: int, pool: bool) -> list[_Stream]:
    """Streams for ``items`` (item 0 = graph, always alone), in payload order.

    With ``pool``, :func:`grouping.plan_streams` pools tensors of equal item size; per item size the pooled plan is
    kept only if its coded payloads (plus a per-stream header estimate) are no larger than one stream per tensor, so
    pooling can never make a container bigger than per-tensor coding by more than that estimate's error.
    """
    singles = [_encode_stream(items, [i], coder, zstd_level) for i in range(len(items))]
    if not pool or len(items) <= 2:
        return singles
    groups = [[i + 1 for i in g] for g in plan_streams([(it.raw, it.itemsize) for it in items[1:]])]
    chosen = [singles[0]]
    for size in sorted({items[g[0]].itemsize for g in groups}):
        these = [g for g in groups if items[g[0]].itemsize == size]
        pooled = [singles[g[0]] if len(g) == 1 else _encode_stream(items, g, coder, zstd_level) for g in these]
        alone = [singles[i] for g in these for i in g]
        cost = [sum(len(st.payload) + STREAM_RECORD_BYTES for st in v) for v in (pooled, alone)]
        chosen += pooled if cost[0] <= cost[1] else alone
    return sorted(chosen, key=lambda st: st.members[0])


def _apportion(items: list[_Item], st: _Stream) -> list[float]:
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


def pack_onnx(onnx_path: str | Path, out_path: str | Path, coder: str = "auto", zstd_level: int = 19,
              pool: bool = True) -> dict[str, Any]:
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

    Returns:
        ``{"file", "size_bytes", "onnx_bytes", "tensors": [{"name", "dtype", "stored_dtype", "numel", "stream", "coder",
        "bytes", "bits_per_weight", "entropy_bits_per_symbol", "is_weight"}], "streams": [{"coder", "records", "nbytes",
        "bytes", "table_bytes"}], "total_bits_per_weight", "order0_bits_per_weight", "table_bits_per_weight",
        "weight_numel", "decode_mb_s", "read_mb_s",
        "decode_mb_s_by_coder", "coders_used", "kept_inline"}``. A tensor's ``bytes`` is its share of its stream (see
        ``_apportion``; exact for a stream of one). Bits per weight are over the 8-bit weight tensors (NaN when the
        model has none); the order-0 bound is each weight tensor's own empirical entropy, so pooled streams are held
        to the stricter per-tensor bound. ``decode_mb_s``: MB of decoded tensor bytes (all records but the graph)
        per second of decoding their streams; ``read_mb_s``: MB of all decoded bytes per second of whole-file reads
        (sha256, header checks, CRC32s included); both medians of ``DECODE_REPEATS`` runs that vary from run to run
        (keep them out of hashed files).

    Raises:
        InputError: unreadable/invalid model. ConfigError: unknown coder. ValidationError: verification failed.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if coder != "auto":
        CODERS.get(coder)
    model = _load_onnx(onnx_path)
    weights = _weight_tensor_names(model)
    graph_bytes, moved, inline = _split_model(model, weights)
    items = [_Item(GRAPH_KEY, np.frombuffer(graph_bytes, dtype=np.uint8)), *(_Item(n, a) for n, a in moved)]
    streams = _plan(items, coder, zstd_level, pool)
    data = _assemble(items, streams, zstd_level, _producer())
    atomic_write_bytes(out_path, data)

    # Verify what is on disk, not what is in memory.
    disk = out_path.read_bytes()
    t0 = time.perf_counter()
    try:
        header, arrays = read_container(disk)
    except ContainerError as e:
        raise ValidationError(f"pack_onnx: the container just written to {out_path} does not read back: {e}") from None
    decode_s = time.perf_counter() - t0
    if arrays[GRAPH_KEY].tobytes() != graph_bytes:
        raise ValidationError(f"pack_onnx: graph bytes of {out_path} differ from the source after decoding")
    for name, arr in moved:
        got = arrays[name]
        if got.dtype != arr.dtype or got.shape != arr.shape or got.tobytes() != arr.tobytes():
            raise ValidationError(f"pack_onnx: tensor {name!r} differs from the source after decoding")
    # Re-encode from the decoded arrays alone, with the header's streams and coders: must give the same bytes.
    recs = [header["graph"], *header["tensors"]]
    re_items = [_Item(r["name"], arrays[GRAPH_KEY if i == 0 else r["name"]]) for i, r in enumerate(recs)]
    re_streams = [_encode_stream(re_items, [i for i, r in enumerate(recs) if r["stream"] == j], sh["coder"],
                                 header["zstd_level"]) for j, sh in enumerate(header["streams"])]
    if _assemble(re_items, re_streams, header["zstd_level"], header["producer"]) != disk:
        raise ValidationError(f"pack_onnx: decode -> re-encode of {out_path} is not byte-identical")

    # Two speeds. decode: MB of decoded tensor bytes (every record but the graph) per second of decoding the streams
    # that hold them (the coders' work, tables included), the median of DECODE_REPEATS runs; per coder likewise.
    # read: MB of all decoded bytes per second of whole-file reads (sha256, header validation, every stream,
    # CRC32 per record, arrays), the median of DECODE_REPEATS reads (the first one above is the verification).
    times = [decode_s]
    for _ in range(DECODE_REPEATS - 1):
        t = time.perf_counter()
        read_container(disk)
        times.append(time.perf_counter() - t)
    read_s = statistics.median(times)
    by_coder: dict[str, list[float]] = {}
    tensor_streams = [st for st in streams if st.members != [0]]
    stream_s = [0.0] * DECODE_REPEATS
    for st in tensor_streams:
        acc = by_coder.setdefault(st.coder.name, [0.0, *([0.0] * DECODE_REPEATS)])
        acc[0] += st.nbytes
        for i in range(DECODE_REPEATS):
            t = time.perf_counter()
            st.coder.decode(st.payload, st.nbytes)
            dt = time.perf_counter() - t
            acc[1 + i] += dt
            stream_s[i] += dt
    by_coder_s = {k: (v[0], statistics.median(v[1:])) for k, v in by_coder.items()}
    decode_s = statistics.median(stream_s)
    tensor_bytes = sum(st.nbytes for st in tensor_streams)

    share: dict[int, tuple[int, float]] = {}
    table_bytes = []
    for j, st in enumerate(streams):
        table_bytes.append(model_bytes(st.coder, st.payload, b"".join(items[i].raw for i in st.members)))
        for i, b in zip(st.members, _apportion(items, st)):
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
    total_raw = sum(st.nbytes for st in streams)
    return {
        "file": str(out_path),
        "size_bytes": len(disk),
        "onnx_bytes": onnx_path.stat().st_size,
        "tensors": tensors,
        "streams": [{"coder": st.coder.name, "records": len(st.members), "nbytes": st.nbytes,
                     "bytes": len(st.payload), "table_bytes": tb} for st, tb in zip(streams, table_bytes)],
        "weight_numel": w_numel,
        "total_bits_per_weight": w_bits / w_numel if w_numel else float("nan"),
        "order0_bits_per_weight": w_h / w_numel if w_numel else float("nan"),
        "table_bits_per_weight": w_table / w_numel if w_numel else float("nan"),
        "decode_mb_s": tensor_bytes / 1e6 / decode_s if decode_s > 0 else float("inf"),
        "read_mb_s": total_raw / 1e6 / read_s if read_s > 0 else float("inf"),
        "decode_mb_s_by_coder": {k: (v[0] / 1e6 / v[1] if v[1] > 0 else float("inf")) for k, v in by_coder_s.items()},
        "coders_used": sorted({st.coder.name for st in streams}),
        "kept_inline": inline,
    }


def unpack_to_onnx(container_path: str | Path, out_path: str | Path) -> Path:
    """Rebuild the runnable ONNX model from an LRDC container (atomically written to ``out_path``).

    The rebuilt model holds exactly the packed tensors, so ONNX Runtime outputs are identical to the packed model's.

    Raises:
        ContainerError: the container is invalid, or its graph and tensors disagree.
    """
    import onnx

    header, arrays = read_container(container_path)
    model = _join_model(arrays[GRAPH_KEY].tobytes(), arrays, header["tensors"])
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx raises several checker error types
        raise ContainerError(f"LRDC container {container_path} rebuilds an invalid ONNX model: {e}") from None
    return atomic_write_bytes(out_path, model.SerializeToString())
