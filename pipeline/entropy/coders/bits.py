"""Bit fields and LEB128 integers shared by the coders' wire formats.

* bit fields are packed LSB-first (the DEFLATE bit order) and zero-padded to a whole byte;
* ``uleb``: unsigned LEB128, 7 bits per byte, low group first, high bit = "more follows"; readers accept only the
  minimal encoding (no trailing zero group) of at most 10 bytes.
"""
from __future__ import annotations

import numpy as np

from pipeline.errors import ContainerError


class BitWriter:
    """LSB-first bit sink (the DEFLATE bit order), fed with vectorised chunks of (value, width) fields.

    Bit fields never overlap, so each output byte is the plain sum of the (<= 4) shifted fields touching it: one
    ``bincount`` per byte offset, no Python loop per field. Widths must be 0..24. Feed large inputs in chunks
    (``ENCODE_CHUNK``) to keep the int64 scratch bounded.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._acc = 0  # pending bits of the last, incomplete byte
        self._nacc = 0

    def write(self, values: np.ndarray | list[int], widths: np.ndarray | list[int]) -> None:
        v = np.asarray(values, dtype=np.int64).ravel()
        w = np.asarray(widths, dtype=np.int64).ravel()
        if self._nacc:
            v = np.concatenate([np.array([self._acc], np.int64), v])
            w = np.concatenate([np.array([self._nacc], np.int64), w])
        if v.size == 0:
            return
        ends = np.cumsum(w)
        total = int(ends[-1])
        nbytes = (total + 7) >> 3
        starts = ends - w
        v = (v & ((np.int64(1) << w) - 1)) << (starts & 7)  # < 2**31
        b = starts >> 3
        out = np.zeros(nbytes + 4, dtype=np.float64)
        for j in range(4):
            # float64 weights hold these small integers exactly; disjoint bits, so no byte ever exceeds 255.
            out += np.bincount(b + j, weights=((v >> (8 * j)) & 255).astype(np.float64),
                               minlength=nbytes + 4)[:nbytes + 4]
        data = out[:nbytes].astype(np.uint8).tobytes()
        full = total >> 3
        self._parts.append(data[:full])
        self._nacc = total & 7
        self._acc = data[full] if self._nacc else 0

    def getvalue(self) -> bytes:
        """Everything written so far, the last byte zero-padded."""
        return b"".join(self._parts) + (bytes([self._acc]) if self._nacc else b"")


def pack_bits(values: np.ndarray | list[int], widths: np.ndarray | list[int]) -> bytes:
    """The low ``widths[i]`` bits of every ``values[i]``, concatenated LSB-first and zero-padded to a whole byte."""
    bw = BitWriter()
    bw.write(values, widths)
    return bw.getvalue()


def uleb(n: int) -> bytes:
    """``n`` >= 0 as a minimal unsigned LEB128."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_uleb(payload: bytes, pos: int, what: str) -> tuple[int, int]:
    """A minimal LEB128 unsigned integer of at most 10 bytes at ``pos``; (value, next position)."""
    value = 0
    for i in range(10):
        if pos + i >= len(payload):
            break
        b = payload[pos + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if b == 0 and i:
                raise ContainerError(f"{what}: symbol count is not minimally encoded")
            return value, pos + i + 1
    raise ContainerError(f"{what}: truncated or over-long symbol count")
