"""Byte-symbol coders of the LRDC weight container: ``raw``, ``zstd`` and ``rans`` (constriction's ANS).

Every coder maps ``bytes -> bytes`` and back, and every decoder is *bounded*: it is told exactly how many symbols
(bytes) to produce and raises :class:`~pipeline.errors.ContainerError` if the payload does not decode to exactly that
many or is not fully consumed. Coder ids are stable on-disk ids; never renumber them.

rANS payload (all little-endian)::

    u8   precision p (8..15): frequencies sum to exactly 2**p
    u16  k, the number of distinct symbols (1..256)
    u64  n, the number of symbols (must equal what the container record says: a one-symbol source codes to zero
         bits, so the count cannot be left to the stream)
    k    u8 symbols, strictly increasing
    k    u16 frequencies, each >= 1, sum == 2**p
    rest u32 ANS words (absent when k == 1: a one-symbol source costs zero bits)

Exactness: the model is built from the stored *integer* table. ``f / 2**p`` is an exact binary float, so every
platform hands constriction the same float64 probabilities, and constriction turns them into its fixed-point model
with deterministic integer/IEEE-754 arithmetic (``perfect=False`` set explicitly so a changed library default cannot
silently change the model). Decoding is therefore bit-exact for a given constriction release; the packer also decodes
what it wrote and checks every byte, so an incompatible library would fail loudly at pack time, never silently.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pipeline.errors import ContainerError
from pipeline.registry import Registry

RANS_PRECISION = 15  # 2**15 total: fits u16 even for a one-symbol table; within 0.001 bit/symbol of the entropy
_RANS_HEAD = struct.Struct("<BHQ")
_DECODE_CHUNK = 1 << 20  # rANS decodes in chunks so the int32 scratch stays at 4 MiB whatever the tensor size


@dataclass(frozen=True)
class Coder:
    """A registered coder.

    Attributes:
        name: registry name ("raw", "zstd", "rans").
        id: stable on-disk id stored in the container.
        encode: ``encode(symbols: bytes, **opts) -> bytes`` (deterministic: same input and opts, same bytes).
        decode: ``decode(payload: bytes, n: int) -> bytes``, exactly ``n`` bytes or ContainerError.
    """

    name: str
    id: int
    encode: Callable[..., bytes]
    decode: Callable[[bytes, int], bytes]


CODERS: Registry[Coder] = Registry("coder")


def coder_by_id(cid: int) -> Coder:
    """The coder with on-disk id ``cid``, or ContainerError naming the known ids."""
    for name in CODERS.names():
        c = CODERS.get(name)
        if c.id == cid:
            return c
    known = ", ".join(f"{CODERS.get(n).id}={n}" for n in CODERS.names())
    raise ContainerError(f"unknown coder id {cid!r} in container; known ids: {known}")


# ------------------------------------------------------------------------------------------------------------ raw
def _raw_encode(symbols: bytes, **_: Any) -> bytes:
    return bytes(symbols)


def _raw_decode(payload: bytes, n: int) -> bytes:
    if len(payload) != n:
        raise ContainerError(f"raw payload has {len(payload)} bytes, expected exactly {n}")
    return bytes(payload)


CODERS.add("raw", Coder("raw", 0, _raw_encode, _raw_decode))


# ----------------------------------------------------------------------------------------------------------- zstd
def _zstd_encode(symbols: bytes, level: int = 19, **_: Any) -> bytes:
    import zstandard

    # Single-threaded, content size in the frame, no checksum (the container has CRC32 + sha256): deterministic bytes.
    c = zstandard.ZstdCompressor(level=int(level), write_content_size=True, write_checksum=False, write_dict_id=False,
                                 threads=0)
    return c.compress(bytes(symbols))


def _zstd_decode(payload: bytes, n: int) -> bytes:
    import zstandard

    try:
        size = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as e:
        raise ContainerError(f"zstd payload has no valid frame header: {e}") from None
    # Check the declared size before decompressing, so a forged frame header cannot make zstd allocate.
    if size != n:
        raise ContainerError(f"zstd frame declares {size} bytes, container record says {n}")
    try:
        out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=n, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise ContainerError(f"zstd payload is corrupt: {e}") from None
    if len(out) != n:
        raise ContainerError(f"zstd payload decoded to {len(out)} bytes, expected {n}")
    return out


CODERS.add("zstd", Coder("zstd", 1, _zstd_encode, _zstd_decode))


# ----------------------------------------------------------------------------------------------------------- rANS
def quantize_frequencies(counts: np.ndarray, precision: int = RANS_PRECISION) -> np.ndarray:
    """Integer frequencies summing to exactly ``2**precision``, each >= 1, roughly proportional to ``counts``.

    Pure integer arithmetic (deterministic on every platform). ``counts`` must be positive, at most 256 of them.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = 1 << precision
    if counts.ndim != 1 or not 1 <= len(counts) <= 256 or (counts <= 0).any():
        raise ValueError("quantize_frequencies needs 1..256 positive counts")
    f = np.maximum(1, (counts * total) // int(counts.sum()))
    diff = total - int(f.sum())
    # Give the rounding remainder to (or take it from) the most frequent symbols: cheapest in bits, and always possible
    # because k <= 256 <= 2**precision leaves room for every symbol to keep frequency >= 1.
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


def _rans_model(freqs: np.ndarray, precision: int) -> Any:
    import constriction

    # f / 2**p is exact in float64 (see module docstring for why this makes the model bit-exact).
    return constriction.stream.model.Categorical(freqs.astype(np.float64) / float(1 << precision), perfect=False)


def _rans_encode(symbols: bytes, **_: Any) -> bytes:
    import constriction

    x = np.frombuffer(bytes(symbols), dtype=np.uint8)
    if x.size == 0:
        return b""
    counts = np.bincount(x, minlength=256)
    alphabet = np.flatnonzero(counts).astype(np.uint8)
    freqs = quantize_frequencies(counts[alphabet], RANS_PRECISION)
    head = _RANS_HEAD.pack(RANS_PRECISION, len(alphabet), x.size) + alphabet.tobytes() + freqs.astype("<u2").tobytes()
    if len(alphabet) == 1:
        return head
    lut = np.zeros(256, dtype=np.int32)
    lut[alphabet] = np.arange(len(alphabet), dtype=np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(lut[x], _rans_model(freqs, RANS_PRECISION))
    return head + coder.get_compressed().astype("<u4").tobytes()


def _rans_decode(payload: bytes, n: int) -> bytes:
    import constriction

    if n == 0:
        if payload:
            raise ContainerError(f"rANS payload for 0 symbols must be empty, has {len(payload)} bytes")
        return b""
    if len(payload) < _RANS_HEAD.size:
        raise ContainerError(f"rANS payload too short for its table header ({len(payload)} bytes)")
    precision, k, count = _RANS_HEAD.unpack_from(payload, 0)
    if count != n:
        raise ContainerError(f"rANS payload holds {count} symbols, container record says {n}")
    if not 8 <= precision <= 15:
        raise ContainerError(f"rANS precision {precision} outside 8..15")
    if not 1 <= k <= 256:
        raise ContainerError(f"rANS alphabet size {k} outside 1..256")
    table_end = _RANS_HEAD.size + 3 * k
    if len(payload) < table_end:
        raise ContainerError(f"rANS payload ({len(payload)} bytes) shorter than its {k}-symbol table")
    alphabet = np.frombuffer(payload, dtype=np.uint8, count=k, offset=_RANS_HEAD.size)
    freqs = np.frombuffer(payload, dtype="<u2", count=k, offset=_RANS_HEAD.size + k).astype(np.int64)
    if k > 1 and not (np.diff(alphabet.astype(np.int16)) > 0).all():
        raise ContainerError("rANS symbols are not strictly increasing")
    if (freqs < 1).any() or int(freqs.sum()) != 1 << precision:
        raise ContainerError(f"rANS frequencies must be >= 1 and sum to 2**{precision}")
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


CODERS.add("rans", Coder("rans", 2, _rans_encode, _rans_decode))


def order0_entropy(symbols: bytes | np.ndarray) -> float:
    """Order-0 (memoryless) Shannon entropy of a byte sequence, in bits per symbol (0 for empty input)."""
    x = np.frombuffer(bytes(symbols), dtype=np.uint8) if not isinstance(symbols, np.ndarray) else symbols.view(np.uint8)
    if x.size == 0:
        return 0.0
    p = np.bincount(x.ravel(), minlength=256).astype(np.float64)
    p = p[p > 0] / x.size
    return max(0.0, float(-(p * np.log2(p)).sum()))  # max(): no -0.0 for one-symbol input


def encode_auto(symbols: bytes, zstd_level: int = 19) -> tuple[Coder, bytes]:
    """Encode with every coder and keep the smallest payload (ties go to the lower id: raw, then zstd, then rANS)."""
    best: tuple[Coder, bytes] | None = None
    for name in CODERS.names():
        c = CODERS.get(name)
        payload = c.encode(symbols, level=zstd_level)
        if best is None or len(payload) < len(best[1]):
            best = (c, payload)
    assert best is not None
    return best
