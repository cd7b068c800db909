"""``rans`` (id 2): static rANS with constriction's ``AnsCoder``, the reference rANS.

Lands within ~0.002 bit/symbol of the order-0 entropy plus its frequency table (~50-400 bytes) but decodes at only
~40-45 MB/s on 8-bit weights: constriction's categorical decoder binary-searches a 24-bit CDF for every symbol
(~5.5 ns + ~2.3 ns per doubling of the alphabet: 21 ns/symbol for 255 symbols, ~7 ns for 3), and that, not the Python
around it, is where the time goes. ``auto`` rarely keeps it (its speed class is slow).

Wire format::

    u8   precision p (8..15): frequencies sum to exactly 2**p
    u8   k - 1, k the number of distinct symbols (1..256)
    u64  n, the number of symbols (must equal what the container record says: a one-symbol source codes to zero
         bits, so the count cannot be left to the stream)
    the alphabet and (k >= 2) the frequencies: the table of :mod:`.table`
    (k >= 2) u32 ANS words, at least one (constriction's AnsCoder)

Exactness: the model is built from the stored *integer* table. ``f / 2**p`` is an exact binary float, so every
platform hands constriction the same float64 probabilities, and constriction turns them into its fixed-point model
with deterministic integer/IEEE-754 arithmetic (``perfect=False`` set explicitly so a changed library default cannot
silently change the model). Decoding is therefore bit-exact for a given constriction release; the packer also decodes
what it wrote and checks every byte, so an incompatible library would fail loudly at pack time, never silently.

Largest expansion: none that the payload can tell. constriction re-quantizes the table to its own fixed point and
may give the dominant symbol a probability so close to 1 that, once its words are used up, it decodes further copies
of that symbol at no cost (measured: 10**6 zeros with one rare symbol in 8 bytes of words, the coder "empty" after
60 % of them). So a ``rans`` stream's count is bounded only by the container's limits (``max_total_bytes`` and
``max_expansion``); the fast coders have payload bounds of their own.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

from pipeline.entropy.coders.base import Coder
from pipeline.entropy.coders.table import RANS_PRECISION, rans_table, read_table, static_model
from pipeline.errors import ContainerError

ID = 2
_RANS_HEAD = struct.Struct("<BBQ")
_DECODE_CHUNK = 1 << 20  # decodes in chunks so the int32 scratch stays at 4 MiB whatever the tensor size


def _rans_model(freqs: np.ndarray, precision: int) -> Any:
    import constriction

    # f / 2**p is exact in float64 (see module docstring for why this makes the model bit-exact).
    return constriction.stream.model.Categorical(freqs.astype(np.float64) / float(1 << precision), perfect=False)


def encode(symbols: bytes, **_: Any) -> bytes:
    """Head, table and (k >= 2) the ANS words of ``symbols`` (module docstring)."""
    import constriction

    x = np.frombuffer(bytes(symbols), dtype=np.uint8)
    if x.size == 0:
        return b""
    alphabet, ranks, p, freqs = static_model(x)
    head = _RANS_HEAD.pack(p, len(alphabet) - 1, x.size) + rans_table(alphabet, freqs)
    if len(alphabet) == 1:
        return head
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(ranks.astype(np.int32), _rans_model(freqs, p))
    return head + coder.get_compressed().astype("<u4").tobytes()


def decode(payload: bytes, n: int) -> bytes:
    """Exactly ``n`` bytes from a rans payload, or ContainerError."""
    import constriction

    if n == 0:
        if payload:
            raise ContainerError(f"rANS payload for 0 symbols must be empty, has {len(payload)} bytes")
        return b""
    if len(payload) < _RANS_HEAD.size:
        raise ContainerError(f"rANS payload too short for its table header ({len(payload)} bytes)")
    precision, k1, count = _RANS_HEAD.unpack_from(payload, 0)
    k = k1 + 1
    if count != n:
        raise ContainerError(f"rANS payload holds {count} symbols, container record says {n}")
    if not 8 <= precision <= RANS_PRECISION:
        raise ContainerError(f"rANS precision {precision} outside 8..{RANS_PRECISION}")
    alphabet, freqs, table_end = read_table(payload, _RANS_HEAD.size, k, precision)
    words_bytes = len(payload) - table_end
    if k == 1:
        if words_bytes:
            raise ContainerError(f"rANS one-symbol payload has {words_bytes} unexpected trailing bytes")
        return bytes(alphabet) * n
    if words_bytes % 4 or words_bytes == 0:
        raise ContainerError(f"rANS word stream length {words_bytes} is not a positive multiple of 4")
    words = np.frombuffer(payload, dtype="<u4", offset=table_end).astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        model = _rans_model(freqs, precision)
        out = np.empty(n, dtype=np.uint8)
        for start in range(0, n, _DECODE_CHUNK):
            m = min(_DECODE_CHUNK, n - start)
            out[start:start + m] = alphabet[coder.decode(model, m)]
        empty = coder.is_empty()
    except (ValueError, RuntimeError, OverflowError) as e:
        raise ContainerError(f"rANS stream is corrupt: {e}") from None
    if not empty:
        raise ContainerError(f"rANS stream not fully consumed after {n} symbols (corrupt or wrong length)")
    return out.tobytes()


def model_bytes(payload: bytes, symbols: bytes) -> int:  # noqa: ARG001 - one signature for every coder
    """Head and table: everything before the ANS words."""
    try:
        _, k1, _ = _RANS_HEAD.unpack_from(payload, 0)
        return read_table(payload, _RANS_HEAD.size, k1 + 1, payload[0])[2]
    except (ContainerError, IndexError, struct.error, ValueError):
        return 0


CODER = Coder("rans", ID, encode, decode, model_bytes, speed=1)
