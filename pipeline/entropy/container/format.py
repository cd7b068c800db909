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
2 rans, 3 huffman, 4 planes, 5 rans16, 6 rans16ch), ``offset``/``length`` locate the payload relative to the start of
the payload area (sorted, contiguous, covering the area exactly), and it decodes to exactly ``nbytes`` bytes: the stored
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

Reading is strict and bounded (:func:`parse_header`, then :func:`pipeline.entropy.container.read.read_container`):
every size is checked against the bytes that remain before anything is allocated, and a small file cannot make the
reader allocate much, because before any stream is decoded

* the decoded total, both as stored (sum of the streams' ``nbytes``) and as returned (sum of the records'
  ``prod(shape) * itemsize(dtype)``: narrowed records widen), is at most ``max_total_bytes`` (default
  ``MAX_TOTAL_BYTES`` = 1 GiB; the format's own ceiling is ``FORMAT_MAX_BYTES`` = 2 GiB, the protobuf limit of one
  ONNX file);
* the stored total is at most ``max_expansion`` (default ``MAX_EXPANSION`` = 4096) times the file's size: real
  weight containers expand 2-20x, but a one-symbol stream (huffman mode 0, a one-letter rANS table) codes any count
  in a few bytes;
* each stream's ``nbytes`` is at most what its payload length allows for its coder where the coder has a fixed
  ratio (raw: exactly its length; zstd: 32768x), and every decoder checks its own bound (DEFLATE's 1032x, rANS under
  its table) before allocating its output.

Both limits are parameters of the reader (``read_container``, ``unpack_to_onnx``, ``pack_onnx``'s verification).
Any problem raises :class:`ContainerError`, naming the record or stream and the limit.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

import numpy as np

from pipeline.entropy.coders import coder_by_id, raw as raw_coder, zstd as zstd_coder
from pipeline.errors import ContainerError

MAGIC = b"LRDC"
VERSION = 3
MAX_HEADER_BYTES = 16 << 20
FORMAT_MAX_BYTES = 2 << 30  # one ONNX protobuf cannot exceed 2 GiB, so no valid container decodes to more
MAX_TOTAL_BYTES = 1 << 30  # the reader's default cap on decoded bytes (a parameter: raise it for trusted files)
MAX_EXPANSION = 4096  # the reader's default cap on decoded bytes per byte of file (a parameter)
MAX_NDIM = 32
MAX_NAME_CHARS = 4096
GRAPH_KEY = "__lrdc_graph__"  # reserved name under which read_container returns the graph bytes
PREFIX = struct.Struct("<4sHIBI")
TRAILER = 32
_HEADER_CODERS = (0, 1)  # raw, zstd
_HEADER_ZSTD_LEVEL = 19

HEADER_FIELDS = {"format", "version", "producer", "zstd_level", "streams", "records"}
STREAM_FIELDS = {"coder", "offset", "length", "nbytes"}
RECORD_FIELDS = {"name", "dtype", "stored_dtype", "shape", "stream", "start", "nbytes", "crc32"}
# dtype name -> ONNX TensorProto data type. Types outside this table (strings, bfloat16, 4-bit...) stay in the graph.
ONNX_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6, "int64": 7, "bool": 9,
               "float16": 10, "float64": 11, "uint32": 12, "uint64": 13}
# Lossless storage narrowings the reader accepts (logical dtype -> allowed stored dtypes).
NARROWINGS = {"float32": ("float16",), "int64": ("int32", "int16", "int8"), "int32": ("int16", "int8")}
ITEMSIZE = {name: np.dtype(name).itemsize for name in ONNX_TYPES}
DTYPE = {name: np.dtype(name) for name in ONNX_TYPES}
DTYPE_LE = {name: (d.newbyteorder("<") if d.itemsize > 1 else d) for name, d in DTYPE.items()}


def canonical(obj: Any) -> bytes:
    """The header's canonical JSON: sorted keys, no whitespace, ASCII only, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def le(dtype: str) -> np.dtype:
    """The little-endian form of ``dtype`` (the byte order of every stored value)."""
    return np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)



def columns(row_list: list[dict[str, Any]], fields: set[str]) -> dict[str, list[Any]]:
    """Rows -> the header's column form: one list per field (half the JSON of rows, ~3x faster to parse)."""
    return {f: [r[f] for r in row_list] for f in sorted(fields)}


def rows(cols_obj: Any, fields: set[str], what: str, at_least: int) -> list[dict[str, Any]]:
    """The header's column form -> rows, after checking its shape: exactly ``fields``, lists of one length."""
    if not isinstance(cols_obj, dict) or cols_obj.keys() != fields:
        got = sorted(cols_obj) if isinstance(cols_obj, dict) else type(cols_obj).__name__
        raise ContainerError(f"LRDC header {what} must be an object with the columns {sorted(fields)}, got {got}")
    cols = [cols_obj[f] for f in sorted(fields)]
    if not all(type(c) is list for c in cols) or len({len(c) for c in cols}) != 1 or len(cols[0]) < at_least:
        raise ContainerError(f"LRDC header {what} columns must be lists of one length (at least {at_least})")
    keys = sorted(fields)
    return [dict(zip(keys, vals)) for vals in zip(*cols)]


def seal(header: bytes, payloads: bytes, version: int = VERSION, header_coder: int | None = None) -> bytes:
    """Prefix + coded header + payload area + sha256 (``header_coder`` None: the smaller of raw and zstd)."""
    if header_coder is None:
        z = zstd_coder.encode(header, level=_HEADER_ZSTD_LEVEL)
        header_coder, coded = (1, z) if len(z) < len(header) else (0, header)
    else:
        coded = coder_by_id(header_coder).encode(header, level=_HEADER_ZSTD_LEVEL)
    body = b"".join([PREFIX.pack(MAGIC, version, len(header), header_coder, len(coded)), coded, payloads])
    return body + hashlib.sha256(body).digest()


# ---------------------------------------------------------------------------------------------------- reading
def _int(v: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    # bool is an int subclass in Python; JSON true/false must not pass as sizes.
    if type(v) is not int or v < lo or (hi is not None and v > hi):
        top = hi if hi is not None else "inf"
        raise ContainerError(f"container header: {what} must be an integer in [{lo}, {top}], got {v!r}")
    return v


def _check_stream(s: Any, where: str) -> dict[str, Any]:
    if not isinstance(s, dict) or s.keys() != STREAM_FIELDS:
        got = sorted(s) if isinstance(s, dict) else type(s).__name__
        raise ContainerError(f"container header: {where} must be an object with fields {sorted(STREAM_FIELDS)}, "
                             f"got {got}")
    _int(s["coder"], f"{where} coder", 0, 255)
    for k in ("offset", "length", "nbytes"):
        _int(s[k], f"{where} {k}", 0)
    return s


def _check_record(r: Any, where: str) -> dict[str, Any]:
    # Hot path (one call per record on every read): plain comparisons first, messages built only on failure.
    if not isinstance(r, dict):
        raise ContainerError(f"container header: {where} is not an object")
    if r.keys() != RECORD_FIELDS:
        keys = set(r)
        extra, missing = sorted(keys - RECORD_FIELDS), sorted(RECORD_FIELDS - keys)
        raise ContainerError(f"container header: {where} has unknown fields {extra} / missing fields {missing}")
    name = r["name"]
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS:
        raise ContainerError(f"container header: {where} name must be a non-empty string of <= {MAX_NAME_CHARS} chars")
    dtype, stored = r["dtype"], r["stored_dtype"]
    if type(dtype) is not str or dtype not in ONNX_TYPES:
        raise ContainerError(f"container header: {where} ({name!r}) has unsupported dtype {dtype!r}")
    if type(stored) is not str or (stored != dtype and stored not in NARROWINGS.get(dtype, ())):
        raise ContainerError(f"container header: {where} ({name!r}) cannot store {dtype} as {stored!r}")
    shape = r["shape"]
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise ContainerError(f"container header: {where} ({name!r}) shape must be a list of <= {MAX_NDIM} dims")
    for d in shape:
        if type(d) is not int or not 0 <= d <= FORMAT_MAX_BYTES:
            _int(d, f"{where} ({name!r}) shape entry", 0, FORMAT_MAX_BYTES)
    for key in ("stream", "start", "nbytes", "crc32"):
        v = r[key]
        if type(v) is not int or v < 0 or (key == "crc32" and v > 0xFFFFFFFF):
            _int(v, f"{where} {key}", 0, 0xFFFFFFFF if key == "crc32" else None)
    # Python ints: no overflow, whatever the dims.
    expect = math.prod(shape) * ITEMSIZE[stored]
    if r["nbytes"] != expect:
        raise ContainerError(f"container header: {where} ({name!r}) nbytes {r['nbytes']} != prod({shape}) * "
                             f"itemsize({stored}) = {expect}")
    return r


def _records_look_valid(c: dict[str, list[Any]]) -> bool:
    """Every check of :func:`_check_record`, column by column (the fast path of every read; on False the per-record
    checks run to name the culprit)."""
    names, dtypes, stored, shapes = c["name"], c["dtype"], c["stored_dtype"], c["shape"]
    return (all(type(x) is str and 0 < len(x) <= MAX_NAME_CHARS for x in names)
            and all(type(d) is str and d in ONNX_TYPES for d in dtypes)
            and all(type(t) is str and (t == d or t in NARROWINGS.get(d, ())) for d, t in zip(dtypes, stored))
            and all(type(sh) is list and len(sh) <= MAX_NDIM
                    and all(type(x) is int and 0 <= x <= FORMAT_MAX_BYTES for x in sh) for sh in shapes)
            and all(type(v) is int and v >= 0 for k in ("stream", "start", "nbytes", "crc32") for v in c[k])
            and all(v <= 0xFFFFFFFF for v in c["crc32"])
            and all(nb == math.prod(sh) * ITEMSIZE[t] for nb, sh, t in zip(c["nbytes"], shapes, stored)))


def parse_header(data: bytes | memoryview, max_total_bytes: int = MAX_TOTAL_BYTES,
                 max_expansion: int = MAX_EXPANSION) -> tuple[dict[str, Any], int]:
    """Validate magic/version/lengths/sha256, the header and the decoded-size bounds (module docstring).

    Returns:
        ``(header as rows, payload area start)``; nothing of the payloads is decoded yet.
    """
    n = len(data)
    if n < PREFIX.size + TRAILER:
        raise ContainerError(f"container is {n} bytes, shorter than the minimal {PREFIX.size + TRAILER}; truncated?")
    magic, version = struct.unpack_from("<4sH", data, 0)
    if magic != MAGIC:
        raise ContainerError(f"not an LRDC container (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ContainerError(f"LRDC version {version} is not supported by this reader (supports {VERSION}); "
                             "upgrade lowrank-deploy or re-pack the model")
    _, _, hlen, hcoder, clen = PREFIX.unpack_from(data, 0)
    if not 1 <= hlen <= MAX_HEADER_BYTES:
        raise ContainerError(f"LRDC header length {hlen} outside 1..{MAX_HEADER_BYTES}")
    if hcoder not in _HEADER_CODERS:
        raise ContainerError(f"LRDC header coder {hcoder} is not one of {_HEADER_CODERS} (raw, zstd)")
    if not 1 <= clen <= n - TRAILER - PREFIX.size:
        raise ContainerError(f"LRDC coded header length {clen} outside 1..{n - PREFIX.size - TRAILER} (the bytes "
                             "available); truncated file?")
    if hashlib.sha256(data[:n - TRAILER]).digest() != bytes(data[n - TRAILER:]):
        raise ContainerError("LRDC sha256 mismatch: the file is corrupt, truncated or was modified")
    try:
        raw = coder_by_id(hcoder).decode(bytes(data[PREFIX.size:PREFIX.size + clen]), hlen)
    except ContainerError as e:
        raise ContainerError(f"LRDC header does not decode: {e}") from None
    try:
        header = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ContainerError(f"LRDC header is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise ContainerError("LRDC header is not a JSON object")
    try:
        canon = canonical(header)
    except (ValueError, RecursionError):
        canon = b""
    if canon != raw:
        raise ContainerError("LRDC header is not canonical JSON (duplicate keys, whitespace or key order)")
    if set(header) != HEADER_FIELDS:
        raise ContainerError(f"LRDC header fields {sorted(header)} != expected {sorted(HEADER_FIELDS)}")
    if header["format"] != "LRDC" or header["version"] != version:
        raise ContainerError("LRDC header format/version disagree with the file prefix")
    if not isinstance(header["producer"], str) or len(header["producer"]) > 1024:
        raise ContainerError("LRDC header producer must be a string of <= 1024 chars")
    _int(header["zstd_level"], "zstd_level", -131072, 22)
    streams = [_check_stream(r, f"streams[{j}]")
               for j, r in enumerate(rows(header["streams"], STREAM_FIELDS, "streams", 1))]
    records = rows(header["records"], RECORD_FIELDS, "records", 1)
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
    start = PREFIX.size + clen
    area = n - TRAILER - start
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
    _check_bounds(streams, records, n, max_total_bytes, max_expansion)
    top = {k: header[k] for k in ("format", "version", "producer", "zstd_level")}
    return {**top, "streams": streams, "graph": records[0], "tensors": records[1:]}, start



# Coders whose payload length alone bounds the decoded size: on-disk id -> most decoded bytes per payload byte.
_FIXED_RATIO = {raw_coder.ID: 1, zstd_coder.ID: zstd_coder.MAX_RATIO}


def _first_record(records: list[dict[str, Any]], j: int) -> str:
    return next((r["name"] for r in records if r["stream"] == j), "?")


def _check_bounds(streams: list[dict[str, Any]], records: list[dict[str, Any]], file_size: int,
                  max_total_bytes: int, max_expansion: int) -> None:
    """Reject declared sizes the file cannot honestly hold, before anything is decoded or allocated."""
    for j, s in enumerate(streams):
        ratio = _FIXED_RATIO.get(s["coder"])
        if ratio is not None and s["nbytes"] > ratio * s["length"]:
            raise ContainerError(
                f"LRDC stream {j} (record {_first_record(records, j)!r}, coder {coder_by_id(s['coder']).name}) "
                f"declares {s['nbytes']} bytes from a {s['length']}-byte payload, more than that coder's {ratio}x "
                "limit: the header is corrupt or forged")
    stored = sum(s["nbytes"] for s in streams)
    logical = [math.prod(r["shape"]) * ITEMSIZE[r["dtype"]] for r in records]
    total = max(stored, sum(logical))
    if total > max_total_bytes:
        big = max(range(len(records)), key=logical.__getitem__)
        raise ContainerError(
            f"LRDC container would decode to {total} bytes (largest record {records[big]['name']!r}: {logical[big]} "
            f"bytes), over the limit max_total_bytes={max_total_bytes}; if the file is trusted, pass a larger "
            "max_total_bytes to read_container / unpack_to_onnx")
    if stored > max_expansion * file_size:
        j = max(range(len(streams)), key=lambda i: streams[i]["nbytes"])
        raise ContainerError(
            f"LRDC container of {file_size} bytes declares {stored} decoded bytes, more than max_expansion="
            f"{max_expansion} times its size (largest: stream {j}, record {_first_record(records, j)!r}, "
            f"{streams[j]['nbytes']} bytes from a {streams[j]['length']}-byte payload); if the file is trusted, pass "
            "a larger max_expansion to read_container / unpack_to_onnx")
