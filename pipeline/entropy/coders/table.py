"""The rANS frequency table shared by the ``rans``, ``rans16`` and ``rans16ch`` coders.

Table layout (after each coder's head, which gives the precision p and the alphabet size k)::

    the alphabet: k bytes strictly increasing if k <= 32, else a 32-byte bitmap (bit s = symbol s present, LSB-first)
         with exactly k bits set
    (k >= 2) the frequencies of the first k - 1 symbols as a bit field, zero-padded to a whole byte: k - 1 4-bit
         lengths L = bit_length(f - 1), then for each symbol the L - 1 bits of f - 1 below its leading one (none when
         L <= 1); every f >= 1, and the last symbol's frequency is 2**p minus the others' (must be >= 1)

The packer uses p = clamp(bit_length(n) - 3, 8, 15) for n symbols: lower precision for small tensors makes the table
cheaper. Frequencies are integers, so the model is the same on every platform.

Largest expansion of a table-driven rANS stream (:func:`max_symbols`): every symbol of a table whose most frequent
symbol has frequency ``f_max < 2**p`` shrinks the coder state by at least the factor ``1 - d / 2`` with
``d = (2**p - f_max) / 2**p`` (state ``x = q 2**p + slot`` with ``q >= 1`` becomes ``f q + slot - c``, i.e. loses
``q (2**p - f) + c``), that is by at least ``d / 2 * log2(e)`` bits, while the coded bits and the final states supply
the state's bits. A one-symbol table (k = 1) codes to zero bits, so its count is bounded only by the container.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.entropy.coders.bits import pack_bits
from pipeline.errors import ContainerError

RANS_PRECISION = 15  # the highest precision: 2**15 fits u16 even for a one-symbol table


def quantize_frequencies(counts: np.ndarray, precision: int = RANS_PRECISION) -> np.ndarray:
    """Integer frequencies summing to exactly ``2**precision``, each >= 1, roughly proportional to ``counts``.

    Pure integer arithmetic (deterministic on every platform). ``counts`` must be positive, at most 256 of them.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = 1 << precision
    if counts.ndim != 1 or not 1 <= len(counts) <= min(256, total) or (counts <= 0).any():
        raise ValueError("quantize_frequencies needs 1..min(256, 2**precision) positive counts")
    f = np.maximum(1, (counts * total) // int(counts.sum()))
    diff = total - int(f.sum())
    # Give the rounding remainder to (or take it from) the most frequent symbols: cheapest in bits, and always possible
    # because k <= 2**precision leaves room for every symbol to keep frequency >= 1.
    order = np.argsort(-f, kind="stable")
    i = 0
    while diff != 0:
        j = order[i % len(order)]
        if diff > 0:
            f[j] += diff
            diff = 0
        else:
            take = min(-diff, int(f[j]) - 1)
            f[j] -= take
            diff += take
            i += 1
    return f


def rans_precision(n: int) -> int:
    """The packer's rANS precision for ``n`` symbols: ``clamp(bit_length(n) - 3, 8, 15)``.

    A finer table costs more bits to store than it saves on a small sample; measured on Laplacian int8 tensors of
    576..590k symbols, this rule is within 0.01 bit/symbol of the best precision for the total payload size.
    """
    return min(RANS_PRECISION, max(8, int(n).bit_length() - 3))


def alphabet_bytes(alphabet: np.ndarray) -> bytes:
    """The alphabet as k increasing bytes (k <= 32) or a 32-byte presence bitmap."""
    if len(alphabet) <= 32:
        return alphabet.astype(np.uint8).tobytes()
    present = np.zeros(256, dtype=np.uint8)
    present[alphabet] = 1
    return np.packbits(present, bitorder="little").tobytes()


def freq_field(freqs: np.ndarray) -> bytes:
    """The first k - 1 frequencies as 4-bit lengths + mantissas, zero-padded to a byte (empty for k = 1)."""
    if len(freqs) == 1:
        return b""
    v = freqs[:-1].astype(np.int64) - 1
    lengths = sum(((v >> j) > 0).astype(np.int64) for j in range(16))  # bit_length, integer arithmetic
    widths = np.maximum(lengths - 1, 0)
    return pack_bits(np.concatenate([lengths, v]), np.concatenate([np.full(len(v), 4), widths]))


def rans_table(alphabet: np.ndarray, freqs: np.ndarray) -> bytes:
    """Alphabet (list or bitmap) and the first k - 1 frequencies as 4-bit lengths + mantissas (module docstring)."""
    return alphabet_bytes(alphabet) + freq_field(freqs)


def static_model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """The one-table model both rANS encoders use: (alphabet, each symbol's rank in it, precision, frequencies)."""
    counts = np.bincount(x, minlength=256)
    alphabet = np.flatnonzero(counts).astype(np.uint8)
    p = rans_precision(x.size)
    rank = np.zeros(256, dtype=np.int64)
    rank[alphabet] = np.arange(len(alphabet))
    return alphabet, rank[x], p, quantize_frequencies(counts[alphabet], p)


def read_alphabet(payload: bytes, pos: int, k: int) -> tuple[np.ndarray, int]:
    """Parse a k-symbol alphabet (list or bitmap) at ``pos``; return (alphabet, end position), validated."""
    if k <= 32:
        if len(payload) < pos + k:
            raise ContainerError(f"rANS payload ({len(payload)} bytes) shorter than its {k}-symbol alphabet")
        raw = payload[pos:pos + k]
        if any(a >= b for a, b in zip(raw, raw[1:])):  # plain bytes: cheaper than numpy for <= 32 values
            raise ContainerError("rANS symbols are not strictly increasing")
        return np.frombuffer(raw, dtype=np.uint8), pos + k
    if len(payload) < pos + 32:
        raise ContainerError("rANS payload is shorter than its alphabet bitmap")
    present = np.unpackbits(np.frombuffer(payload, dtype=np.uint8, count=32, offset=pos), bitorder="little")
    alphabet = np.flatnonzero(present).astype(np.uint8)
    if len(alphabet) != k:
        raise ContainerError(f"rANS alphabet bitmap has {len(alphabet)} symbols, header says {k}")
    return alphabet, pos + 32


def read_freq_field(payload: bytes, pos: int, k: int, precision: int) -> tuple[np.ndarray, int]:
    """Parse k frequencies summing to 2**precision at ``pos``; return (frequencies, end position), validated."""
    if k == 1:
        return np.array([1 << precision], dtype=np.int64), pos
    from pipeline.entropy import rans_kernels  # lazy: imports numba (~0.7 s), needed only to read a table

    # Compiled: a Python loop over the fields costs ~20 us for an 8-bit alphabet, which dominated small streams.
    out = np.empty(k, dtype=np.int64)
    end = rans_kernels.read_freq_field(np.frombuffer(payload, dtype=np.uint8), pos, k, precision, out)
    if end == -1:
        raise ContainerError("rANS payload is shorter than its frequency table")
    if end == -2:
        raise ContainerError("rANS frequency table has non-zero padding bits")
    if end == -3:
        raise ContainerError(f"rANS frequencies must be >= 1 and sum to 2**{precision}")
    return out, end


def read_table(payload: bytes, pos: int, k: int, precision: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse alphabet and frequencies at ``pos``; return (alphabet, frequencies, end position), validated."""
    alphabet, pos = read_alphabet(payload, pos, k)
    freqs, pos = read_freq_field(payload, pos, k, precision)
    return alphabet, freqs, pos


def max_symbols(freqs: list[np.ndarray], precision: int, state_bits: int, margin: int = 2) -> float:
    """The most symbols a rANS stream with these tables can decode from ``state_bits`` bits of words and states.

    Sound for every valid stream (module docstring), times ``margin``: a declared count above it cannot be honest,
    so the reader rejects it before allocating the output. ``inf`` for a one-symbol table.
    """
    f_max = max(int(f.max()) for f in freqs)
    return symbols_bound(((1 << precision) - f_max) / float(1 << precision), state_bits, margin)


def symbols_bound(residual: float, state_bits: int, margin: int = 2) -> float:
    """The most symbols a rANS decoder can produce from ``state_bits`` bits when the most likely symbol's probability
    is at most ``1 - residual``: each symbol costs at least ``residual / 2 * log2(e)`` bits (module docstring)."""
    if residual <= 0:  # one-symbol table: zero bits per symbol
        return math.inf
    return float(int(margin * state_bits / (residual / 2 * math.log2(math.e)))) + 2
