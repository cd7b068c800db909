"""``rans16`` (id 5): static rANS with a 32-bit state and 16-bit words, decoded by a compiled table lookup.

Codes with the same integer frequency table as ``rans`` (same size within a few bytes) but decodes with a slot ->
symbol lookup table and two interleaved states in a numba-compiled loop (:mod:`pipeline.entropy.rans_kernels`):
~200-280 MB/s on 4- and 8-bit weights, so it is the fast coder that reaches the entropy on low-bit grids, where
Huffman pays for whole bits per packed pair and a ~100-byte DEFLATE header per stream. ``rans16ch`` shares its head,
its word stream and its decoder.

Wire format::

    u8   precision p (8..15), u8 k - 1, uleb n (minimal; must equal the container record)
    the alphabet and frequencies: the table of :mod:`.table`
    (k >= 2) u32 state0, u32 state1: the encoder's final states (decoding starts from them)
    (k >= 2) u16 words in decode order; symbol i is decoded from state i % 2, and each state reads at most one word
         per symbol (rans_kernels has the arithmetic). After n symbols every word must be consumed and both states
         must equal 2**16, the encoder's initial state, or the payload is rejected

Largest expansion: :func:`.table.max_symbols` of the table(s) over the words' and states' bits, checked before the
output is allocated; k = 1 is bounded only by the container's caps.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

from pipeline.entropy.coders.base import Coder
from pipeline.entropy.coders.bits import read_uleb, uleb
from pipeline.entropy.coders.table import (RANS_PRECISION, max_symbols, rans_table, read_alphabet, read_freq_field,
                                           read_table, static_model)
from pipeline.errors import ContainerError

ID = 5


def read_head(payload: bytes, n: int, name: str) -> tuple[int, int, np.ndarray, int]:
    """Validate the head shared by ``rans16`` and ``rans16ch``: (precision, k, alphabet, position after it)."""
    if len(payload) < 3:
        raise ContainerError(f"{name} payload too short for its head ({len(payload)} bytes)")
    precision, k = payload[0], payload[1] + 1
    if not 8 <= precision <= RANS_PRECISION:
        raise ContainerError(f"{name} precision {precision} outside 8..{RANS_PRECISION}")
    count, pos = read_uleb(payload, 2, f"{name} payload")
    if count != n:
        raise ContainerError(f"{name} payload holds {count} symbols, container record says {n}")
    alphabet, pos = read_alphabet(payload, pos, k)
    return precision, k, alphabet, pos


def encode_words(freqs: np.ndarray, ranks: np.ndarray, tables: np.ndarray, precision: int) -> bytes:
    """The coded part shared by ``rans16`` and ``rans16ch``: two final states, then the words in decode order."""
    from pipeline.entropy import rans_kernels  # lazy: imports numba (~0.7 s)

    cums = np.concatenate([np.zeros((len(freqs), 1), np.int64), np.cumsum(freqs, 1)[:, :-1]], 1)
    words = np.empty(ranks.size + 1, dtype=np.uint16)  # at most one word per symbol
    s0, s1, first = rans_kernels.encode_words(ranks.astype(np.uint8), tables.astype(np.uint8), freqs, cums,
                                              precision, words)
    return struct.pack("<II", int(s0), int(s1)) + words[first:].astype("<u2").tobytes()


def decode_words(payload: bytes, pos: int, n: int, name: str, alphabet: np.ndarray, freqs: list[np.ndarray],
                 precision: int, counts: list[int], lengths: list[int], index: np.ndarray, bits: int) -> bytes:
    """Decode the coded part at ``pos`` with tables ``freqs`` and segments (runs, packed table indices); validated."""
    from pipeline.entropy import rans_kernels  # lazy: imports numba (~0.7 s)

    rest = len(payload) - pos
    if rest < 8 or rest % 2:
        raise ContainerError(f"{name} stream of {rest} bytes is not two 4-byte states plus 16-bit words")
    if n > max_symbols(freqs, precision, 8 * rest + 64):
        raise ContainerError(f"{name} payload: {rest} bytes of states and words cannot hold {n} symbols under its "
                             f"table(s)")
    s0, s1 = struct.unpack_from("<II", payload, pos)
    words = np.frombuffer(payload, dtype="<u2", offset=pos + 8)
    f2 = np.stack(freqs)
    luts = np.empty((len(freqs), 1 << precision), dtype=np.uint8)
    cums = np.empty(f2.shape, dtype=np.int64)
    for t in range(len(freqs)):
        rans_kernels.build_tables(f2[t], precision, luts[t], cums[t])
    out = np.empty(n, dtype=np.uint8)
    f0, f1, used, status = rans_kernels.decode_words(
        s0, s1, words, luts, f2, cums, np.ascontiguousarray(alphabet), precision,
        np.array(counts, dtype=np.int64), np.array(lengths, dtype=np.int64), index, bits, out)
    if status == 2:
        raise ContainerError(f"{name}: a segment names a table beyond its {len(freqs)}")
    if status == 1:
        raise ContainerError(f"{name} stream ends before its symbols do (truncated or corrupt)")
    if used != len(words) or f0 != rans_kernels.RANS_L or f1 != rans_kernels.RANS_L:
        raise ContainerError(f"{name} stream not fully consumed after {n} symbols (corrupt or wrong length)")
    return out.tobytes()


def encode(symbols: bytes, **_: Any) -> bytes:
    """Head, table and (k >= 2) the two states and the words of ``symbols`` (module docstring)."""
    x = np.frombuffer(bytes(symbols), dtype=np.uint8)
    if x.size == 0:
        return b""
    alphabet, ranks, p, freqs = static_model(x)
    head = bytes([p, len(alphabet) - 1]) + uleb(x.size) + rans_table(alphabet, freqs)
    if len(alphabet) == 1:
        return head
    return head + encode_words(freqs[None], ranks, np.zeros(x.size, np.uint8), p)


def decode(payload: bytes, n: int) -> bytes:
    """Exactly ``n`` bytes from a rans16 payload, or ContainerError."""
    if n == 0:
        if payload:
            raise ContainerError(f"rans16 payload for 0 symbols must be empty, has {len(payload)} bytes")
        return b""
    precision, k, alphabet, pos = read_head(payload, n, "rans16")
    freqs, pos = read_freq_field(payload, pos, k, precision)
    if k == 1:
        if pos != len(payload):
            raise ContainerError(f"rans16 one-symbol payload has {len(payload) - pos} unexpected trailing bytes")
        return bytes(alphabet) * n
    # One table, one segment of all n symbols.
    return decode_words(payload, pos, n, "rans16", alphabet, [freqs], precision, [1], [n], np.zeros(0, np.uint8), 0)


def model_bytes(payload: bytes, symbols: bytes) -> int:  # noqa: ARG001 - one signature for every coder
    """Head and table: everything before the two states."""
    try:
        _, pos = read_uleb(payload, 2, "")
        return read_table(payload, pos, payload[1] + 1, payload[0])[2]
    except (ContainerError, IndexError, struct.error, ValueError):
        return 0


CODER = Coder("rans16", ID, encode, decode, model_bytes, speed=0)
