"""Amplification cases for the fuzzer: small, well-formed containers (valid sha256, canonical header, consistent
records) that declare far more decoded bytes than their payloads can hold.

Each case keeps a seed container's graph record and stream and replaces the tensors by forged ones of one kind:

* ``one-symbol``: a one-symbol stream (huffman mode 0 or a one-letter rANS table: zero bits per symbol) declaring
  2**24 .. 2**31 - 1 bytes (up to 2**33, beyond the format's ceiling, in the shape alone);
* ``widening``: the same, stored as int8 but declared int64, so the returned arrays would be 8x the stored bytes;
* ``many-records``: 16-64 one-symbol records of 2**22 .. 2**26 bytes each, every one small, the sum not;
* ``count``: a real multi-symbol rans / rans16 / rans16ch / huffman payload whose symbol count (in the payload and
  the records) is multiplied, so only the coder's own expansion bound can tell (for ``rans``, which has none, the
  container's limits);
* ``ratio``: a zstd or raw stream declaring more bytes than that coder can expand its payload to.

Every case must be rejected with :class:`~pipeline.errors.ContainerError` before the decoded bytes are allocated.
"""
from __future__ import annotations

import json
import random
import struct
from typing import Any

import numpy as np

from pipeline.entropy.coders import CODERS, coder_by_id
from pipeline.entropy.coders.bits import read_uleb, uleb
from pipeline.entropy.container.format import PREFIX, RECORD_FIELDS, STREAM_FIELDS, TRAILER, canonical, columns, seal

KINDS = ("one-symbol", "widening", "many-records", "count", "ratio")
_ONE_SYMBOL_CODERS = ("huffman", "rans", "rans16", "rans16ch")
_COUNT_CODERS = ("huffman", "rans", "rans16", "rans16ch")


def split_container(data: bytes) -> tuple[bytes, bytes]:
    """(decoded header JSON bytes, payload area) of a well-formed container (no checks: for building mutants)."""
    _, _, _, hcoder, clen = PREFIX.unpack_from(data, 0)
    hlen = struct.unpack_from("<I", data, 6)[0]
    raw = coder_by_id(hcoder).decode(bytes(data[PREFIX.size:PREFIX.size + clen]), hlen)
    return raw, bytes(data[PREFIX.size + clen:-TRAILER])


def one_symbol_payload(coder: str, n: int, symbol: int = 0) -> bytes:
    """A valid payload of ``coder`` holding ``n`` copies of one symbol (a few bytes whatever ``n``)."""
    if coder == "huffman":
        return bytes([0]) + uleb(n) + bytes([symbol])
    if coder == "rans":
        return struct.pack("<BBQ", 8, 0, n) + bytes([symbol])
    return bytes([8, 0]) + uleb(n) + bytes([symbol])  # rans16, rans16ch


def _with_count(coder: str, payload: bytes, n: int) -> bytes:
    """``payload`` (of ``coder``, k >= 2) with its symbol count replaced by ``n``."""
    if coder == "rans":
        return payload[:2] + struct.pack("<Q", n) + payload[10:]
    _, end = read_uleb(payload, 1 if coder == "huffman" else 2, "")
    start = 1 if coder == "huffman" else 2
    return payload[:start] + uleb(n) + payload[end:]


def forge(seed: bytes, streams: list[tuple[int, bytes, int]], records: list[tuple[str, str, str, list[int], int]],
          ) -> bytes:
    """A sealed container: ``seed``'s graph record and stream, then ``streams`` ``(coder id, payload, nbytes)`` and
    ``records`` ``(name, dtype, stored_dtype, shape, stream index among the forged)`` tiling them in order."""
    raw, area = split_container(seed)
    header = json.loads(raw)
    g = {f: header["records"][f][0] for f in RECORD_FIELDS}
    gs = {f: header["streams"][f][g["stream"]] for f in STREAM_FIELDS}
    gpay = area[gs["offset"]:gs["offset"] + gs["length"]]
    srows = [{**gs, "offset": 0}]
    off = len(gpay)
    for cid, payload, nbytes in streams:
        srows.append({"coder": cid, "offset": off, "length": len(payload), "nbytes": nbytes})
        off += len(payload)
    rrows = [{**g, "stream": 0, "start": 0}]
    filled = [0] * len(streams)
    for name, dtype, stored, shape, j in records:
        nbytes = int(np.prod(shape, dtype=object)) * np.dtype(stored).itemsize
        rrows.append({"name": name, "dtype": dtype, "stored_dtype": stored, "shape": shape, "stream": j + 1,
                      "start": filled[j], "nbytes": nbytes, "crc32": 0})
        filled[j] += nbytes
    header["streams"] = columns(srows, STREAM_FIELDS)
    header["records"] = columns(rrows, RECORD_FIELDS)
    return seal(canonical(header), gpay + b"".join(p for _, p, _ in streams))


def case(seed: bytes, r: random.Random) -> tuple[str, bytes]:
    """``(kind, container)``: one amplification case built from ``seed`` (module docstring)."""
    kind = r.choice(KINDS)
    if kind in ("one-symbol", "widening"):
        coder = r.choice(_ONE_SYMBOL_CODERS)
        n = r.choice([1 << 24, 1 << 28, 1 << 30, (1 << 31) - 1, 1 << 33])
        stored, dtype = ("int8", "int64") if kind == "widening" else ("uint8", "uint8")
        return kind, forge(seed, [(CODERS.get(coder).id, one_symbol_payload(coder, n), n)],
                           [("big", dtype, stored, [n], 0)])
    if kind == "many-records":
        count, n = r.randint(16, 64), r.choice([1 << 22, 1 << 24, 1 << 26])
        coder = r.choice(_ONE_SYMBOL_CODERS)
        cid = CODERS.get(coder).id
        return kind, forge(seed, [(cid, one_symbol_payload(coder, n), n) for _ in range(count)],
                           [(f"t{i}", "uint8", "uint8", [n], i) for i in range(count)])
    rng = np.random.default_rng(r.randrange(1 << 30))
    src = np.clip(np.round(rng.laplace(0, r.choice([0.3, 3, 20]), r.randint(64, 4096))), -127, 127).astype(np.int8)
    src[0], src[1] = 0, 1  # at least two symbols: a real table
    if kind == "count":
        coder = r.choice(_COUNT_CODERS)
        payload = CODERS.get(coder).encode(src.tobytes())
        n = r.choice([2 * src.size, 100 * src.size, 1 << 22, 1 << 26])
        return kind, forge(seed, [(CODERS.get(coder).id, _with_count(coder, payload, n), n)],
                           [("w", "int8", "int8", [n], 0)])
    coder = r.choice(["zstd", "raw"])
    payload = CODERS.get(coder).encode(src.tobytes(), level=3)
    n = r.choice([len(payload) + 1, 40000 * len(payload), 1 << 26])
    return kind, forge(seed, [(CODERS.get(coder).id, payload, n)], [("w", "int8", "int8", [n], 0)])


def describe(kind: str, data: bytes) -> dict[str, Any]:
    """Size facts of a case for failure reports: kind, file bytes, declared decoded bytes."""
    header = json.loads(split_container(data)[0])
    return {"kind": kind, "file_bytes": len(data), "declared_bytes": sum(header["streams"]["nbytes"])}
