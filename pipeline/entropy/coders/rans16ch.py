"""``rans16ch`` (id 6): ``rans16`` with up to 16 frequency tables, one chosen per segment (e.g. output channel).

Tensors pooled in one stream, and the output channels inside one tensor, often differ in spread; one table per group
of similar segments codes them closer to their own entropy for the price of the extra tables and a few index bits per
segment. The encoder picks 1, 2, 4, 8 or 16 tables by Lloyd iterations on the exact coded size.

Wire format::

    u8   precision p (8..15), u8 k - 1, uleb n (minimal; must equal the container record)
    the alphabet (as in :mod:`.table`); for k = 1 nothing follows
    u8   T, the number of tables (1..16), then T frequency fields (as in :mod:`.table`), each over the same alphabet
    uleb R, then R (uleb count, uleb length) runs: count consecutive segments of length symbols each; every count and
         length >= 1, and the runs cover exactly n symbols
    the table index of every segment, ceil(log2 T) bits each, LSB-first, zero-padded to a byte (none when T = 1)
    u32 state0, u32 state1 and the u16 words, exactly as in ``rans16``; segment j is decoded with its table

Largest expansion: as ``rans16``, under the most skewed of the T tables.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

from pipeline.entropy.coders.base import Coder
from pipeline.entropy.coders.bits import pack_bits, read_uleb, uleb
from pipeline.entropy.coders.rans16 import decode_words, encode_words, read_head
from pipeline.entropy.coders.table import (alphabet_bytes, freq_field, quantize_frequencies, rans_precision,
                                           read_alphabet, read_freq_field)
from pipeline.errors import ContainerError

ID = 6
MAX_TABLES = 16


def _runs(segments: Any, n: int) -> list[tuple[int, int]]:
    """Validated ``(count, length)`` runs covering ``n`` symbols, or one segment of all of them."""
    try:
        runs = [(int(c), int(m)) for c, m in segments] if segments is not None else []
    except (TypeError, ValueError):
        runs = []
    if not runs or any(c < 1 or m < 1 for c, m in runs) or sum(c * m for c, m in runs) != n:
        return [(1, n)]
    merged: list[tuple[int, int]] = []
    for c, m in runs:  # adjacent runs of equal length are one run
        if merged and merged[-1][1] == m:
            merged[-1] = (merged[-1][0] + c, m)
        else:
            merged.append((c, m))
    return merged


def _fit_tables(ranks: np.ndarray, k: int, seg_len: np.ndarray, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment table choice: (assignment per segment, frequencies (K, k)) with the smallest estimated size.

    For K = 1, 2, 4, 8, 16 tables: segments are split into K groups by their order-0 entropy, then refined by
    Lloyd iterations (each segment moves to the table that codes it in the fewest bits; each table becomes its
    segments' pooled histogram). The estimate is exact for the data (ideal code length under the quantized tables)
    plus the tables' and the per-segment indices' bytes. Deterministic for given input on a given platform.
    """
    nseg = len(seg_len)
    seg_id = np.repeat(np.arange(nseg), seg_len)
    hist = np.bincount(seg_id * k + ranks, minlength=nseg * k).reshape(nseg, k).astype(np.float64)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for tables in (1, 2, 4, 8, MAX_TABLES):
        if tables > nseg:
            break
        if tables == 1:
            assign = np.zeros(nseg, dtype=np.int64)
        else:
            tot = hist.sum(1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                ent = -np.where(hist > 0, hist / tot * np.log2(hist / tot), 0.0).sum(1)
            assign = np.empty(nseg, dtype=np.int64)
            assign[np.argsort(ent, kind="stable")] = (np.arange(nseg) * tables) // nseg
            for _ in range(8):
                pooled = np.zeros((tables, k))
                np.add.at(pooled, assign, hist)
                q = pooled + 0.5
                logq = np.log2(q / q.sum(1, keepdims=True))
                new = np.argmin(-(hist @ logq.T), axis=1)
                if (new == assign).all():
                    break
                assign = new
            used, assign = np.unique(assign, return_inverse=True)
            tables = len(used)
        pooled = np.zeros((tables, k), dtype=np.int64)
        np.add.at(pooled, assign, hist.astype(np.int64))
        freqs = np.stack([quantize_frequencies(np.maximum(row, 1), precision) for row in pooled])
        bits = float((hist * (precision - np.log2(freqs[assign]))).sum())
        bits += 8 * sum(len(freq_field(f)) for f in freqs) + nseg * (tables - 1).bit_length()
        if best is None or bits < best[0]:
            best = (bits, assign, freqs)
    assert best is not None
    return best[1], best[2]


def encode(symbols: bytes, segments: Any = None, **_: Any) -> bytes:
    """``symbols`` with per-segment tables; ``segments``: ``(count, length)`` runs (ignored unless they cover the
    symbols exactly: then one segment)."""
    x = np.frombuffer(bytes(symbols), dtype=np.uint8)
    if x.size == 0:
        return b""
    counts = np.bincount(x, minlength=256)
    alphabet = np.flatnonzero(counts).astype(np.uint8)
    k = len(alphabet)
    p = rans_precision(x.size)
    head = bytes([p, k - 1]) + uleb(x.size) + alphabet_bytes(alphabet)
    if k == 1:
        return head
    runs = _runs(segments, x.size)
    seg_len = np.repeat([m for _, m in runs], [c for c, _ in runs])
    lut = np.zeros(256, dtype=np.int64)
    lut[alphabet] = np.arange(k)
    ranks = lut[x]
    assign, freqs = _fit_tables(ranks, k, seg_len, p)
    tables = len(freqs)
    b = (tables - 1).bit_length()
    head += bytes([tables]) + b"".join(freq_field(f) for f in freqs)
    head += uleb(len(runs)) + b"".join(uleb(c) + uleb(m) for c, m in runs)
    if b:
        head += pack_bits(assign, np.full(len(assign), b))
    return head + encode_words(freqs, ranks, np.repeat(assign, seg_len), p)


def decode(payload: bytes, n: int) -> bytes:
    """Exactly ``n`` bytes from a rans16ch payload, or ContainerError."""
    if n == 0:
        if payload:
            raise ContainerError(f"rans16ch payload for 0 symbols must be empty, has {len(payload)} bytes")
        return b""
    precision, k, alphabet, pos = read_head(payload, n, "rans16ch")
    if k == 1:
        if pos != len(payload):
            raise ContainerError(f"rans16ch one-symbol payload has {len(payload) - pos} unexpected trailing bytes")
        return bytes(alphabet) * n
    if pos >= len(payload) or not 1 <= payload[pos] <= MAX_TABLES:
        raise ContainerError(f"rans16ch table count must be 1..{MAX_TABLES}")
    tables = payload[pos]
    pos += 1
    freqs = []
    for _ in range(tables):
        f, pos = read_freq_field(payload, pos, k, precision)
        freqs.append(f)
    nruns, pos = read_uleb(payload, pos, "rans16ch runs")
    if nruns < 1 or 2 * nruns > len(payload) - pos:
        raise ContainerError(f"rans16ch: {nruns} segment runs do not fit the payload")
    counts, lengths, covered = [], [], 0
    for _ in range(nruns):
        c, pos = read_uleb(payload, pos, "rans16ch run count")
        m, pos = read_uleb(payload, pos, "rans16ch run length")
        covered += c * m
        if c < 1 or m < 1 or covered > n:
            raise ContainerError("rans16ch segment runs must be positive and cover exactly the symbols")
        counts.append(c)
        lengths.append(m)
    if covered != n:
        raise ContainerError(f"rans16ch segment runs cover {covered} symbols, not {n}")
    b = (tables - 1).bit_length()
    nseg = sum(counts)
    index_len = (nseg * b + 7) >> 3
    if len(payload) - pos < index_len:
        raise ContainerError("rans16ch payload is shorter than its table indices")
    index = np.frombuffer(payload, dtype=np.uint8, count=index_len, offset=pos)
    if b and index_len and int(index[-1]) >> ((nseg * b) & 7 or 8):
        raise ContainerError("rans16ch table indices have non-zero padding bits")
    pos += index_len
    return decode_words(payload, pos, n, "rans16ch", alphabet, freqs, precision, counts, lengths, index, b)


def model_bytes(payload: bytes, symbols: bytes) -> int:  # noqa: ARG001 - one signature for every coder
    """Head, alphabet, tables, segment runs and table indices: everything before the two states."""
    try:
        k = payload[1] + 1
        _, pos = read_uleb(payload, 2, "")
        _, pos = read_alphabet(payload, pos, k)
        if k == 1:
            return pos
        tables, pos = payload[pos], pos + 1
        for _ in range(tables):
            pos = read_freq_field(payload, pos, k, payload[0])[1]
        nruns, pos = read_uleb(payload, pos, "")
        nseg = 0
        for _ in range(nruns):
            c, pos = read_uleb(payload, pos, "")
            pos = read_uleb(payload, pos, "")[1]
            nseg += c
        return pos + ((nseg * (tables - 1).bit_length() + 7) >> 3)
    except (ContainerError, IndexError, struct.error, ValueError):
        return 0


CODER = Coder("rans16ch", ID, encode, decode, model_bytes, speed=0)
