"""``planes`` (id 4): multi-byte values (fp32 scales, int32 biases) split into byte planes, each coded on its own.

The exponent plane of a scale vector is nearly constant, the mantissa planes are not, so one coder for the interleaved
bytes wastes what separate planes save. Each plane gets the ``auto`` choice (:mod:`.auto`) among the single-byte
coders.

Wire format (for values of s > 1 bytes; byte j of every value forms plane j)::

    u8   s (1..8): the record's byte count must be a multiple of s
    s x  (u8 coder id, u32 length): each plane's coder (raw, zstd, huffman, rans, rans16 or rans16ch; never planes)
         and payload length
    the plane payloads, back to back, covering the rest exactly

Largest expansion: each plane is bounded by its own coder. No separate model (``model_bytes`` is 0).
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

from pipeline.entropy.coders.auto import encode_best
from pipeline.entropy.coders.base import Coder
from pipeline.entropy.coders.huffman import CODER as HUFFMAN
from pipeline.entropy.coders.rans import CODER as RANS
from pipeline.entropy.coders.rans16 import CODER as RANS16
from pipeline.entropy.coders.rans16ch import CODER as RANS16CH
from pipeline.entropy.coders.raw import CODER as RAW
from pipeline.entropy.coders.zstd import CODER as ZSTD
from pipeline.errors import ContainerError

ID = 4
_PLANE_ENTRY = struct.Struct("<BI")
# The coders a plane may use, in registry order (the policy's choice does not depend on the order).
PLANE_CODERS: tuple[Coder, ...] = (RAW, ZSTD, HUFFMAN, RANS, RANS16, RANS16CH)
_BY_ID = {c.id: c for c in PLANE_CODERS}


def encode(symbols: bytes, itemsize: int = 1, level: int = 19, **_: Any) -> bytes:
    """Planes of ``itemsize``-byte values (one plane when ``itemsize`` does not divide the input or is not 1..8)."""
    data = bytes(symbols)
    s = int(itemsize) if 1 <= int(itemsize) <= 8 and len(data) % int(itemsize) == 0 else 1
    planes = np.frombuffer(data, dtype=np.uint8).reshape(-1, s).T
    coded = [encode_best(planes[j].tobytes(), PLANE_CODERS, zstd_level=level) for j in range(s)]
    return bytes([s]) + b"".join(_PLANE_ENTRY.pack(c.id, len(p)) for c, p in coded) + b"".join(p for _, p in coded)


def decode(payload: bytes, n: int) -> bytes:
    """Exactly ``n`` bytes from a planes payload, or ContainerError."""
    if not payload:
        raise ContainerError("planes payload is empty")
    s = payload[0]
    if not 1 <= s <= 8 or n % s:
        raise ContainerError(f"planes payload: item size {s} is not 1..8 or does not divide {n} bytes")
    pos = 1 + s * _PLANE_ENTRY.size
    if len(payload) < pos:
        raise ContainerError("planes payload is shorter than its plane table")
    entries = [_PLANE_ENTRY.unpack_from(payload, 1 + j * _PLANE_ENTRY.size) for j in range(s)]
    if sum(length for _, length in entries) != len(payload) - pos:
        raise ContainerError("planes payload: plane lengths do not cover the payload exactly")
    coders = []
    for cid, _ in entries:  # all ids checked before any plane is decoded
        if cid == ID:
            raise ContainerError("planes payload: a plane cannot itself be coded as planes")
        if cid not in _BY_ID:
            known = ", ".join(f"{c.id}={c.name}" for c in PLANE_CODERS)
            raise ContainerError(f"planes payload: unknown plane coder id {cid}; known ids: {known}")
        coders.append(_BY_ID[cid])
    out = np.empty((n // s, s), dtype=np.uint8)
    for j, ((_, length), c) in enumerate(zip(entries, coders)):
        plane = c.decode(payload[pos:pos + length], n // s)
        if len(plane) != n // s:
            raise ContainerError(f"planes payload: plane {j} decoded to {len(plane)} bytes, expected {n // s}")
        out[:, j] = np.frombuffer(plane, dtype=np.uint8)
        pos += length
    return out.tobytes()


def model_bytes(payload: bytes, symbols: bytes) -> int:  # noqa: ARG001 - one signature for every coder
    """0: the planes' own models are not counted separately."""
    return 0


CODER = Coder("planes", ID, encode, decode, model_bytes, speed=0, wide_only=True)
