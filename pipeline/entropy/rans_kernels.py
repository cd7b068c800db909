"""Compiled inner loops of the ``rans16`` coder: a static, table-driven rANS with a 32-bit state and 16-bit words.

Why compiled: rANS is sequential (each symbol's state depends on the previous one), so numpy cannot vectorise it, and a
Python loop runs at ~1 MB/s. constriction (the ``rans`` coder) binary-searches its CDF per symbol (~40-60 MB/s);
a slot -> symbol lookup table decodes one symbol in a handful of integer operations. numba compiles these loops to
machine code once per machine (``cache=True`` keeps the result next to this file or in numba's cache folder).

The scheme is the classic one of Duda's rANS as written by F. Giesen (``rans_word``): state ``x`` in
``[L, L << 16)`` with ``L = 2**16``, frequencies ``f`` summing to ``2**p`` (``p <= 16``), cumulative ``c``:

* encode (symbols in reverse): if ``x >= f << (32 - p)`` emit ``x & 0xFFFF`` and ``x >>= 16`` (one step is always
  enough for ``p <= 16``), then ``x = (x // f << p) + x % f + c``; the encoder starts at ``x = L``;
* decode: ``slot = x & (2**p - 1)``, ``s = lut[slot]``, ``x = f[s] * (x >> p) + slot - c[s]``, then if ``x < L``
  read one word: ``x = x << 16 | word``.

Decoding is bounded and checked: the decoder never reads past its word array (it reports the overrun instead), and
the caller requires that every word was consumed and the state ended at exactly ``L`` (the encoder's start).
All arithmetic is on unsigned integers, so the coded bytes are the same on every platform.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from numba import njit as _njit

RANS_L = 1 << 16  # lower bound of the normalised state interval


def njit(**opts: Any) -> Callable[[Callable[..., Any]], Any]:
    """numba.njit that caches compiled code when it can, and still compiles when it cannot.

    numba refuses ``cache=True`` outright (RuntimeError at decoration) when neither this package's folder nor a user
    cache folder is writable, e.g. a read-only install without a home directory; then each process compiles once.
    """
    def wrap(fn: Callable[..., Any]) -> Any:
        try:
            return _njit(**opts)(fn)
        except RuntimeError:
            return _njit(**{**opts, "cache": False})(fn)
    return wrap


# ------------------------------------------------------------------ coding with one or several tables
@njit(cache=True, nogil=True)
def encode_words(ranks: np.ndarray, tables: np.ndarray, freqs: np.ndarray, cums: np.ndarray, precision: int,
                 words: np.ndarray) -> tuple[int, int, int]:  # pragma: no cover - compiled
    """Encode ``ranks`` in reverse, symbol i with table ``tables[i]`` (rows of ``freqs``/``cums``) and state i % 2.

    Words go to ``words`` from the end backwards. Returns ``(state0, state1, first)``: the stream is
    ``words[first:]`` in decode order.
    """
    x0 = np.uint64(RANS_L)
    x1 = np.uint64(RANS_L)
    pos = words.shape[0]
    p = np.uint64(precision)
    for i in range(ranks.shape[0] - 1, -1, -1):
        s = ranks[i]
        t = tables[i]
        f = np.uint64(freqs[t, s])
        x = x1 if i & 1 else x0
        if x >= (f << (np.uint64(32) - p)):
            pos -= 1
            words[pos] = np.uint16(x & np.uint64(0xFFFF))
            x >>= np.uint64(16)
        x = ((x // f) << p) + (x % f) + np.uint64(cums[t, s])
        if i & 1:
            x1 = x
        else:
            x0 = x
    return x0, x1, pos


@njit(cache=True, nogil=True, inline="always")
def _step(x, lut, freq, cum, alphabet, mask, p, out, i, words, pos):  # pragma: no cover - compiled
    """Decode symbol ``i`` from state ``x`` with one table; returns (state, pos), pos = -1 on a read past the end."""
    slot = x & mask
    s = lut[slot]
    out[i] = alphabet[s]
    x = np.uint64(freq[s]) * (x >> p) + slot - np.uint64(cum[s])
    if x < np.uint64(RANS_L):
        if pos >= words.shape[0]:
            return x, -1
        x = (x << np.uint64(16)) | np.uint64(words[pos])
        pos += 1
    return x, pos


@njit(cache=True, nogil=True)
def decode_words(state0: int, state1: int, words: np.ndarray, luts: np.ndarray, freqs: np.ndarray, cums: np.ndarray,
                 alphabet: np.ndarray, precision: int, run_count: np.ndarray, run_length: np.ndarray,
                 index_bytes: np.ndarray, index_bits: int, out: np.ndarray) -> tuple[int, int, int, int]:  # pragma: no cover
    """Decode segments: ``run_count[r]`` segments of ``run_length[r]`` symbols each, in order; segment j is coded
    with table ``index_bytes``' j-th ``index_bits``-bit field (LSB-first). Symbol i uses state i % 2.

    The caller checks that the runs add up to ``out.shape[0]`` and that ``index_bytes`` holds every field. Returns
    ``(state0, state1, words_read, status)``: status 0 = fine, 1 = a read past the words, 2 = a table index out of
    range (the caller rejects the stream either way); nothing is ever read out of bounds. Inside a segment symbols
    go in pairs (state 0, state 1), both decoded before either refills, so the two dependency chains overlap (about
    1.6x the speed of one state). ``rans16`` is the case of one table and one segment.
    """
    x0 = np.uint64(state0)
    x1 = np.uint64(state1)
    mask = np.uint64((1 << precision) - 1)
    p = np.uint64(precision)
    low = np.uint64(RANS_L)
    sixteen = np.uint64(16)
    nwords = words.shape[0]
    ntables = luts.shape[0]
    pos = 0
    i = 0
    seg = 0
    for r in range(run_count.shape[0]):
        for _ in range(run_count[r]):
            t = 0
            if index_bits > 0:
                bit = seg * index_bits
                for b in range(index_bits):
                    t |= ((index_bytes[(bit + b) >> 3] >> ((bit + b) & 7)) & 1) << b
            seg += 1
            if t >= ntables:
                return x0, x1, pos, 2
            lut, freq, cum = luts[t], freqs[t], cums[t]  # 1-D views: cheaper indexing in the inner loop
            end = i + run_length[r]
            if i & 1 and i < end:
                x1, pos = _step(x1, lut, freq, cum, alphabet, mask, p, out, i, words, pos)
                if pos < 0:
                    return x0, x1, 0, 1
                i += 1
            while i + 1 < end:  # the pair written out: both decodes before either refill
                slot0 = x0 & mask
                slot1 = x1 & mask
                s0 = lut[slot0]
                s1 = lut[slot1]
                out[i] = alphabet[s0]
                out[i + 1] = alphabet[s1]
                x0 = np.uint64(freq[s0]) * (x0 >> p) + slot0 - np.uint64(cum[s0])
                x1 = np.uint64(freq[s1]) * (x1 >> p) + slot1 - np.uint64(cum[s1])
                if x0 < low:
                    if pos >= nwords:
                        return x0, x1, 0, 1
                    x0 = (x0 << sixteen) | np.uint64(words[pos])
                    pos += 1
                if x1 < low:
                    if pos >= nwords:
                        return x0, x1, 0, 1
                    x1 = (x1 << sixteen) | np.uint64(words[pos])
                    pos += 1
                i += 2
            if i < end:
                x0, pos = _step(x0, lut, freq, cum, alphabet, mask, p, out, i, words, pos)
                if pos < 0:
                    return x0, x1, 0, 1
                i += 1
    return x0, x1, pos, 0


# ------------------------------------------------------------------------------------------ table parsing
@njit(cache=True, nogil=True)
def read_freq_field(buf: np.ndarray, pos: int, k: int, precision: int, out: np.ndarray) -> int:  # pragma: no cover
    """Parse the frequency field of k symbols at byte ``pos`` of ``buf`` into ``out`` (int64, length k).

    The layout (coders module): k - 1 4-bit lengths L, then for each symbol the L - 1 low bits of f - 1 (none when
    L <= 1; L = 0 means f = 1), zero-padded to a byte; the last frequency is 2**precision minus the others. Returns the
    end position, or -1 (truncated), -2 (non-zero padding), -3 (frequencies do not leave the last one >= 1).
    """
    n = buf.shape[0]
    nib_bytes = (4 * (k - 1) + 7) >> 3
    if pos + nib_bytes > n:
        return -1
    nbits = 4 * (k - 1)
    for i in range(k - 1):
        b = np.int64(buf[pos + (i >> 1)])
        L = (b >> 4) if i & 1 else (b & 15)
        if L > 1:
            nbits += L - 1
    nbytes = (nbits + 7) >> 3
    if pos + nbytes > n:
        return -1
    if nbits & 7 and np.int64(buf[pos + nbytes - 1]) >> (nbits & 7):
        return -2
    at = 4 * (k - 1)
    total = 0
    for i in range(k - 1):
        b = np.int64(buf[pos + (i >> 1)])
        L = (b >> 4) if i & 1 else (b & 15)
        if L == 0:
            f = 1
        else:
            w = L - 1
            mant = 0
            for j in range(w):
                bit = at + j
                mant |= ((np.int64(buf[pos + (bit >> 3)]) >> (bit & 7)) & 1) << j
            f = (1 << w) + mant + 1
            at += w
        out[i] = f
        total += f
    last = (1 << precision) - total
    if last < 1:
        return -3
    out[k - 1] = last
    return pos + nbytes


@njit(cache=True, nogil=True)
def build_tables(freqs: np.ndarray, precision: int, lut: np.ndarray, cums: np.ndarray) -> None:  # pragma: no cover
    """Fill the slot -> symbol lookup table (2**precision entries) and the cumulative frequencies."""
    c = 0
    for s in range(freqs.shape[0]):
        cums[s] = c
        f = np.int64(freqs[s])
        for j in range(f):
            lut[c + j] = s
        c += f
