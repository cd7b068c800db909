"""Container surgery for the tests: split a container into its header and payload area, and seal an arbitrary
header + payload area into a container with a valid sha256 (so the checks behind the hash are reached)."""
from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import zstandard

PREFIX = struct.Struct("<4sHIBI")


def canonical(obj: Any) -> bytes:
    """The header's canonical JSON (what the packer writes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def split(data: bytes) -> tuple[bytes, bytes]:
    """(header JSON bytes, payload area) of a well-formed container."""
    _, _, hlen, hcoder, clen = PREFIX.unpack_from(data, 0)
    coded = data[PREFIX.size:PREFIX.size + clen]
    raw = coded if hcoder == 0 else zstandard.ZstdDecompressor().decompress(coded, max_output_size=hlen)
    return raw, data[PREFIX.size + clen:-32]


def seal(header: bytes, payload: bytes, version: int = 3, header_coder: int = 1, hlen: int | None = None) -> bytes:
    """Prefix + coded header + payload area + sha256."""
    coded = header if header_coder == 0 else zstandard.ZstdCompressor(level=3, write_content_size=True).compress(header)
    body = PREFIX.pack(b"LRDC", version, len(header) if hlen is None else hlen, header_coder, len(coded)) + coded + payload
    return body + hashlib.sha256(body).digest()


def reseal(body: bytes) -> bytes:
    """``body`` (a container without its trailer) with its sha256 appended."""
    return body + hashlib.sha256(body).digest()
