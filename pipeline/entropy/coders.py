"""Byte-symbol coders of the LRDC weight container: ``raw``, ``zstd``, ``huffman``, ``rans``, ``rans16``, ``planes``.

Every coder maps ``bytes -> bytes`` and back, and every decoder is *bounded*: it is told exactly how many symbols
(bytes) to produce and raises :class:`~pipeline.errors.ContainerError` if the payload does not decode to exactly that
many or is not fully consumed. Coder ids are stable on-disk ids; never renumber them. Multi-byte integers are
little-endian. Bit fields are packed LSB-first (the DEFLATE bit order).

Which coder for what (measured on int8 weights of a factorized VGG-11, 2-core EPYC; ``encode_auto`` picks per tensor):

* ``huffman`` decodes at ~250-300 MB/s (zlib's C inflate) and lands 0.2-0.6 % above the order-0 entropy on 8-bit
  weight tensors of 10^5 symbols and more: a prefix code spends a whole number of bits per symbol. Low-bit grids
  (k <= 16 distinct values) pack 2-8 symbols per literal, so the whole bits are spent per pair / quintuple;
* ``rans`` lands within ~0.002 bit/symbol of the order-0 entropy plus its frequency table (~50-400 bytes) but decodes
  at only ~40-45 MB/s on 8-bit weights: constriction's categorical decoder binary-searches a 24-bit CDF for every
  symbol (~5.5 ns + ~2.3 ns per doubling of the alphabet: 21 ns/symbol for 255 symbols, ~7 ns for 3), and that, not
  the Python around it, is where the time goes. It stays as the reference rANS; ``auto`` rarely keeps it;
* ``rans16`` codes with the same integer frequency table as ``rans`` (same size within a few bytes) but decodes with a
  slot -> symbol lookup table and two interleaved states in a numba-compiled loop (:mod:`.rans_kernels`):
  ~200-280 MB/s on 4- and 8-bit weights, so it is the fast coder that reaches the entropy on low-bit grids, where
  Huffman pays for whole bits per packed pair and a ~100-byte DEFLATE header per stream;
* ``zstd`` decodes at ~1 GB/s but its 11-bit Huffman literals and block headers cost 1-10 %;
* ``planes`` splits multi-byte values (fp32 scales, int32 biases) into byte planes coded on their own: the exponent
  plane of a scale vector is nearly constant, the mantissa planes are not.

huffman payload::

    u8   m: 0 = one-symbol source: just the symbol below, no stream (zero bits per symbol)
            1 = the DEFLATE stream below carries the n bytes themselves
            2..8 = packed: m symbols of a k-letter alphabet per DEFLATE literal, m the largest with k**m <= 256
    uleb n, the number of symbols (LEB128, minimal: 1 byte below 128; must equal the container record, since neither
         a one-symbol source nor the padded last literal would reveal a wrong count)
    (m = 0 only) u8 the symbol
    (m >= 2 only) u8 k (2..16), then k bytes: the alphabet, strictly increasing; a literal is
         r_0 + r_1 k + ... + r_{m-1} k**(m-1) over the ranks r of m consecutive symbols in the alphabet, and the last
         literal is padded with rank 0 (ceil(n / m) literals in all)
    rest a raw DEFLATE stream (RFC 1951) that must inflate to exactly those literals and end there. The encoder writes
         one dynamic-Huffman block, literals only, with an optimal length-limited (<= 15 bits, package-merge) canonical
         code; the decoder is zlib's inflate, so any valid DEFLATE stream is accepted (the container's CRC32 and
         sha256 guard the content).

rANS payload::

    u8   precision p (8..15): frequencies sum to exactly 2**p (the packer uses p = clamp(bit_length(n) - 3, 8, 15):
         lower precision for small tensors makes the table cheaper)
    u8   k - 1, k the number of distinct symbols (1..256)
    u64  n, the number of symbols (must equal what the container record says: a one-symbol source codes to zero
         bits, so the count cannot be left to the stream)
    the alphabet: k bytes strictly increasing if k <= 32, else a 32-byte bitmap (bit s = symbol s present, LSB-first)
         with exactly k bits set
    (k >= 2) the frequencies of the first k - 1 symbols as a bit field, zero-padded to a whole byte: k - 1 4-bit
         lengths L = bit_length(f - 1), then for each symbol the L - 1 bits of f - 1 below its leading one (none when
         L <= 1); every f >= 1, and the last symbol's frequency is 2**p minus the others' (must be >= 1)
    (k >= 2) u32 ANS words, at least one (constriction's AnsCoder)

rans16 payload (the table is the rANS table above, after a shorter head)::

    u8   precision p (8..15), u8 k - 1, uleb n (as in huffman: minimal, must equal the container record)
    the alphabet and frequencies exactly as in the rANS payload
    (k >= 2) u32 state0, u32 state1: the encoder's final states (decoding starts from them)
    (k >= 2) u16 words in decode order; symbol i is decoded from state i % 2, and each state reads at most one word
         per symbol (rans_kernels has the arithmetic). After n symbols every word must be consumed and both states
         must equal 2**16, the encoder's initial state, or the payload is rejected

planes payload (for values of s > 1 bytes; byte j of every value forms plane j)::

    u8   s (1..8): the record's byte count must be a multiple of s
    s x  (u8 coder id, u32 length): each plane's coder (raw, zstd, huffman or rans; never planes) and payload length
    the plane payloads, back to back, covering the rest exactly

Exactness: the rANS model is built from the stored *integer* table. ``f / 2**p`` is an exact binary float, so every
platform hands constriction the same float64 probabilities, and constriction turns them into its fixed-point model
with deterministic integer/IEEE-754 arithmetic (``perfect=False`` set explicitly so a changed library default cannot
silently change the model). Decoding is therefore bit-exact for a given constriction release; the packer also decodes
what it wrote and checks every byte, so an incompatible library would fail loudly at pack time, never silently.
Huffman code lengths, canonical codes and bit packing are integer arithmetic in this module; DEFLATE decoding is
specified bit-exactly by RFC 1951.
"""
from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pipeline.errors import ContainerError
from pipeline.registry import Registry

RANS_PRECISION = 15  # the highest precision: 2**15 fits u16 even for a one-symbol table
_RANS_HEAD = struct.Struct("<BBQ")
_DECODE_CHUNK = 1 << 20  # rANS decodes in chunks so the int32 scratch stays at 4 MiB whatever the tensor size
_ENCODE_CHUNK = 1 << 20  # huffman writes codes in chunks: bounded int64 scratch whatever the tensor size
_PLANE_ENTRY = struct.Struct("<BI")
HUFFMAN_MAX_BITS = 15  # DEFLATE's limit for literal/length codes
# ``auto`` keeps a fast coder unless rANS saves more than this fraction of its payload and more than
# AUTO_MIN_SAVING bytes (a rANS decode costs ~30 us of model set-up before the first symbol). See encode_auto.
AUTO_TOLERANCE = (1, 128)
AUTO_MIN_SAVING = 64


@dataclass(frozen=True)
class Coder:
    """A registered coder.

    Attributes:
        name: registry name ("raw", "zstd", "huffman", "rans", "planes").
        id: stable on-disk id stored in the container.
        encode: ``encode(symbols: bytes, **opts) -> bytes`` (deterministic: same input and opts, same bytes). Options
            a coder does not use are ignored: ``level`` (zstd level), ``itemsize`` (planes).
        decode: ``decode(payload: bytes, n: int) -> bytes``, exactly ``n`` bytes or ContainerError.
        speed: decode-speed class: 0 = fast (C decoders, hundreds of MB/s or more), 1 = slow (rANS, tens of MB/s);
            ``auto`` prefers the fast class unless rANS saves more than ``AUTO_TOLERANCE`` and ``AUTO_MIN_SAVING``.
    """

    name: str
    id: int
    encode: Callable[..., bytes]
    decode: Callable[[bytes, int], bytes]
    speed: int = 0


CODERS: Registry[Coder] = Registry("coder")


def coder_by_id(cid: int) -> Coder:
    """The coder with on-disk id ``cid``, or ContainerError naming the known ids."""
    for name in CODERS.names():
        c = CODERS.get(name)
        if c.id == cid:
            return c
    known = ", ".join(f"{CODERS.get(n).id}={n}" for n in CODERS.names())
    raise ContainerError(f"unknown coder id {cid!r} in container; known ids: {known}")


# ------------------------------------------------------------------------------------------------------ bit fields
class BitWriter:
    """LSB-first bit sink (the DEFLATE bit order), fed with vectorised chunks of (value, width) fields.

    Bit fields never overlap, so each output byte is the plain sum of the (<= 4) shifted fields touching it: one
    ``bincount`` per byte offset, no Python loop per field. Widths must be 0..24. Feed large inputs in chunks
    (``_ENCODE_CHUNK``) to keep the int64 scratch bounded.
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


# ------------------------------------------------------------------------------------------------------------ raw
def _raw_encode(symbols: bytes, **_: Any) -> bytes:
    return bytes(symbols)


def _raw_decode(payload: bytes, n: int) -> bytes:
    if len(payload) != n:
        raise ContainerError(f"raw payload has {len(payload)} bytes, expected exactly {n}")
    return bytes(payload)


CODERS.add("raw", Coder("raw", 0, _raw_encode, _raw_decode, speed=0))


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


CODERS.add("zstd", Coder("zstd", 1, _zstd_encode, _zstd_decode, speed=0))


# -------------------------------------------------------------------------------------------------------- huffman
_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
_REV16 = np.zeros(1 << 16, dtype=np.int64)
for _b in range(16):
    _REV16 |= ((np.arange(1 << 16, dtype=np.int64) >> _b) & 1) << (15 - _b)
del _b


def code_lengths(counts: np.ndarray, limit: int) -> np.ndarray:
    """Optimal prefix-code lengths of at most ``limit`` bits (package-merge); 0 for symbols with count 0.

    Integer weights and stable sorts only, so the result is the same on every platform. One used symbol gets length
    1. With two or more used symbols the code is complete (Kraft sum exactly 1), as inflate requires.
    """
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros(len(counts), dtype=np.int64)
    used = np.flatnonzero(counts > 0)
    k = len(used)
    if k <= 1:
        out[used] = 1
        return out
    if k > 1 << limit:
        raise ValueError(f"{k} symbols cannot have codes of <= {limit} bits")
    order = used[np.argsort(counts[used], kind="stable")]
    leaf_w = counts[order]
    leaf_c = np.eye(k, dtype=np.int32)  # row i: how often each leaf occurs in item i
    w, c = leaf_w, leaf_c
    for _ in range(limit - 1):
        m = len(w) & ~1
        aw = np.concatenate([leaf_w, w[0:m:2] + w[1:m:2]])
        ac = np.concatenate([leaf_c, c[0:m:2] + c[1:m:2]])
        idx = np.argsort(aw, kind="stable")
        w, c = aw[idx], ac[idx]
    out[order] = c[:2 * k - 2].sum(0)
    return out


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """RFC 1951 canonical codes for ``lengths`` (<= 15), bit-reversed for LSB-first packing; 0 where length is 0."""
    lengths = np.asarray(lengths, dtype=np.int64)
    bl = np.bincount(lengths, minlength=17)
    bl[0] = 0
    next_code = np.zeros(17, dtype=np.int64)
    code = 0
    for b in range(1, 17):
        code = (code + int(bl[b - 1])) << 1
        next_code[b] = code
    order = np.lexsort((np.arange(len(lengths)), lengths))
    order = order[lengths[order] > 0]
    ls = lengths[order]
    rank = np.arange(len(order)) - np.searchsorted(ls, ls)
    codes = np.zeros(len(lengths), dtype=np.int64)
    codes[order] = next_code[ls] + rank
    return np.where(lengths > 0, _REV16[codes] >> (16 - lengths).clip(0, 16), 0)


def _rle_lengths(lens: list[int]) -> list[tuple[int, int, int]]:
    """A code-length sequence as (symbol, extra value, extra bits): 16 repeats the previous length 3-6 times,
    17 / 18 write 3-10 / 11-138 zeros (RFC 1951 3.2.7)."""
    out: list[tuple[int, int, int]] = []
    i, n = 0, len(lens)
    while i < n:
        length, j = lens[i], i
        while j < n and lens[j] == length:
            j += 1
        run = j - i
        if length == 0:
            while run >= 11:
                r = min(run, 138)
                out.append((18, r - 11, 7))
                run -= r
            if run >= 3:
                out.append((17, run - 3, 3))
                run = 0
        else:
            out.append((length, 0, 0))
            run -= 1
            while run >= 3:
                r = min(run, 6)
                out.append((16, r - 3, 2))
                run -= r
        out += [(length, 0, 0)] * run
        i = j
    return out


def _deflate_header(lens: np.ndarray) -> tuple[list[int], list[int]]:
    """(values, widths) of the dynamic block header that describes literal code lengths ``lens`` (257 entries)."""
    # 257 literal/length code lengths (no length codes used) and a single distance code of length 0 ("no distances").
    seq = _rle_lengths([int(x) for x in lens[:257]] + [0])
    cl_lens = code_lengths(np.bincount([s for s, _, _ in seq], minlength=19), 7)
    if (cl_lens > 0).sum() == 1:  # inflate wants a complete code-length code: pair the lone symbol with a dummy
        cl_lens[int(np.flatnonzero(cl_lens == 0)[0])] = 1
    cl_codes = canonical_codes(cl_lens)
    hclen = 19
    while hclen > 4 and cl_lens[_CL_ORDER[hclen - 1]] == 0:
        hclen -= 1
    # BFINAL = 1, BTYPE = 2 (dynamic), HLIT = 257 - 257, HDIST = 1 - 1, HCLEN, then the code-length code lengths.
    head_v = [1, 2, 0, 0, hclen - 4] + [int(cl_lens[s]) for s in _CL_ORDER[:hclen]]
    head_w = [1, 2, 5, 5, 4] + [3] * hclen
    for s, extra, extra_bits in seq:
        head_v += [int(cl_codes[s]), extra]
        head_w += [int(cl_lens[s]), extra_bits]
    return head_v, head_w


def _literal_lengths(tokens: np.ndarray) -> np.ndarray:
    counts = np.bincount(tokens, minlength=257).astype(np.int64)
    counts[256] = 1  # end-of-block
    return code_lengths(counts, HUFFMAN_MAX_BITS)


def deflate_literals(tokens: np.ndarray) -> bytes:
    """One final dynamic-Huffman DEFLATE block holding ``tokens`` (uint8) as literals, then end-of-block."""
    tokens = np.asarray(tokens, dtype=np.uint8)
    lens = _literal_lengths(tokens)
    assert int((np.int64(1) << (HUFFMAN_MAX_BITS - lens[lens > 0])).sum()) == 1 << HUFFMAN_MAX_BITS  # complete
    codes = canonical_codes(lens)
    # 257 literal/length code lengths (no length codes used) and a single distance code of length 0 ("no distances").
    head_v, head_w = _deflate_header(lens)
    bw = BitWriter()
    bw.write(head_v, head_w)
    for i in range(0, len(tokens), _ENCODE_CHUNK):
        t = tokens[i:i + _ENCODE_CHUNK]
        bw.write(codes[t], lens[t])
    bw.write(codes[256:257], lens[256:257])
    return bw.getvalue()


def inflate_exact(stream: bytes, n: int) -> bytes:
    """Inflate a raw DEFLATE stream that must produce exactly ``n`` bytes, end there and leave no trailing bytes."""
    d = zlib.decompressobj(wbits=-15)
    try:
        out = d.decompress(stream, n + 1)  # at most n + 1 bytes are ever allocated
    except zlib.error as e:
        raise ContainerError(f"huffman (DEFLATE) stream is corrupt: {e}") from None
    if len(out) > n:
        raise ContainerError(f"huffman stream inflates to more than the {n} bytes expected")
    if len(out) < n:
        raise ContainerError(f"huffman stream inflates to {len(out)} bytes, expected {n}")
    if not d.eof:
        raise ContainerError(f"huffman stream is truncated (no final end-of-block after {n} bytes)")
    if d.unused_data:
        raise ContainerError(f"huffman stream has {len(d.unused_data)} trailing bytes after its final block")
    return out


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_uleb(payload: bytes, pos: int, what: str) -> tuple[int, int]:
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


def _pack_width(k: int) -> int:
    """Symbols of a ``k``-letter alphabet per byte literal: the largest m with k**m <= 256."""
    m = 1
    while k ** (m + 1) <= 256:
        m += 1
    return m


def _pack_table(alphabet: np.ndarray, m: int) -> np.ndarray:
    """(k**m, m) uint8: literal -> its m symbols (read-only; cached, since a small stream would spend most of its
    decoding time building it)."""
    return _pack_table_cached(bytes(alphabet), m)


@functools.lru_cache(maxsize=256)
def _pack_table_cached(alphabet: bytes, m: int) -> np.ndarray:
    a = np.frombuffer(alphabet, dtype=np.uint8)
    k = len(a)
    t = np.arange(k ** m, dtype=np.int64)[:, None]
    table = a[(t // (k ** np.arange(m, dtype=np.int64))) % k]
    table.flags.writeable = False
    return table


def _pack_tokens(x: np.ndarray, alphabet: np.ndarray, m: int) -> np.ndarray:
    """uint8 literals of m symbols each (ranks in ``alphabet``, base k, first symbol lowest), tail padded with rank 0."""
    k = len(alphabet)
    rank = np.zeros(256, dtype=np.uint8)
    rank[alphabet] = np.arange(k)
    r = np.zeros((-(-x.size // m), m), dtype=np.uint8)  # last literal padded with rank 0
    r.reshape(-1)[:x.size] = rank[x]
    tokens = np.zeros(len(r), dtype=np.uint16)
    for i in range(m):
        tokens += r[:, i].astype(np.uint16) * np.uint16(k ** i)  # < k**m <= 256
    return tokens.astype(np.uint8)


def _huffman_encode(symbols: bytes, **_: Any) -> bytes:
    x = np.frombuffer(bytes(symbols), dtype=np.uint8)
    if x.size == 0:
        return b""
    present = np.bincount(x, minlength=256) > 0
    k = int(present.sum())
    count = _uleb(x.size)
    if k == 1:
        return bytes([0]) + count + bytes([int(x[0])])
    best = bytes([1]) + count + deflate_literals(x)
    if k <= 16:
        alphabet = np.flatnonzero(present).astype(np.uint8)
        m = _pack_width(k)
        packed = bytes([m]) + count + bytes([k]) + alphabet.tobytes() + deflate_literals(_pack_tokens(x, alphabet, m))
        if len(packed) < len(best):
            best = packed
    return best


def _huffman_decode(payload: bytes, n: int) -> bytes:
    if n == 0:
        if payload:
            raise ContainerError(f"huffman payload for 0 symbols must be empty, has {len(payload)} bytes")
        return b""
    if not payload:
        raise ContainerError("huffman payload is empty")
    m = payload[0]
    if m > 8:
        raise ContainerError(f"huffman payload mode {m} is not 0..8")
    stored, pos = _read_uleb(payload, 1, "huffman payload")
    if stored != n:
        raise ContainerError(f"huffman payload holds {stored} symbols, container record says {n}")
    if m == 0:
        if len(payload) != pos + 1:
            raise ContainerError(f"huffman one-symbol payload must end after its symbol ({len(payload)} bytes)")
        return payload[pos:pos + 1] * n
    if m == 1:
        return inflate_exact(payload[pos:], n)
    if len(payload) < pos + 1:
        raise ContainerError("huffman packed payload is truncated")
    k = payload[pos]
    if not 2 <= k <= 16 or _pack_width(k) != m:
        raise ContainerError(f"huffman packed payload: alphabet size {k} does not pack {m} symbols per literal")
    if len(payload) < pos + 1 + k:
        raise ContainerError("huffman packed payload is shorter than its alphabet")
    raw = payload[pos + 1:pos + 1 + k]
    if any(a >= b for a, b in zip(raw, raw[1:])):
        raise ContainerError("huffman alphabet is not strictly increasing")
    alphabet = np.frombuffer(raw, dtype=np.uint8)
    count = -(-n // m)
    tokens = np.frombuffer(inflate_exact(payload[pos + 1 + k:], count), dtype=np.uint8)
    if int(tokens.max()) >= k ** m:
        raise ContainerError(f"huffman packed literal {int(tokens.max())} is not below {k}**{m}")
    pad = count * m - n
    if pad and int(tokens[-1]) >= k ** (m - pad):
        raise ContainerError("huffman packed payload: the padding of the last literal is not rank 0")
    return _pack_table(alphabet, m)[tokens].reshape(-1)[:n].tobytes()


CODERS.add("huffman", Coder("huffman", 3, _huffman_encode, _huffman_decode, speed=0))


# ----------------------------------------------------------------------------------------------------------- rANS
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


def _rans_model(freqs: np.ndarray, precision: int) -> Any:
    import constriction

    # f / 2**p is exact in float64 (see module docstring for why this makes the model bit-exact).
    return constriction.stream.model.Categorical(freqs.astype(np.float64) / float(1 << precision), perfect=False)


def _alphabet_bytes(alphabet: np.ndarray) -> bytes:
    """The alphabet as k increasing bytes (k <= 32) or a 32-byte presence bitmap."""
    if len(alphabet) <= 32:
        return alphabet.astype(np.uint8).tobytes()
    present = np.zeros(256, dtype=np.uint8)
    present[alphabet] = 1
    return np.packbits(present, bitorder="little").tobytes()


def _freq_field(freqs: np.ndarray) -> bytes:
    """The first k - 1 frequencies as 4-bit lengths + mantissas, zero-padded to a byte (empty for k = 1)."""
    if len(freqs) == 1:
        return b""
    v = freqs[:-1].astype(np.int64) - 1
    lengths = sum(((v >> j) > 0).astype(np.int64) for j in range(16))  # bit_length, integer arithmetic
    widths = np.maximum(lengths - 1, 0)
    return pack_bits(np.concatenate([lengths, v]), np.concatenate([np.full(len(v), 4), widths]))


def _rans_table(alphabet: np.ndarray, freqs: np.ndarray) -> bytes:
    """Alphabet (list or bitmap) and the first k - 1 frequencies as 4-bit lengths + mantissas (module docstring)."""
    return _alphabet_bytes(alphabet) + _freq_field(freqs)


def _static_model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """The one-table model both rANS encoders use: (alphabet, each symbol's rank in it, precision, frequencies)."""
    counts = np.bincount(x, minlength=256)
    alphabet = np.flatnonzero(counts).astype(np.uint8)
    p = rans_precision(x.size)
    rank = np.zeros(256, dtype=np.int64)
    rank[alphabet] = np.arange(len(alphabet))
    return alphabet, rank[x], p, quantize_frequencies(counts[alphabet], p)


def _rans_encode(symbols: bytes, **_: Any) -> bytes:
    import constriction

    x = np.frombuffer(bytes(symbols), dtype=np.uint8)
    if x.size == 0:
        return b""
    alphabet, ranks, p, freqs = _static_model(x)
    head = _RANS_HEAD.pack(p, len(alphabet) - 1, x.size) + _rans_table(alphabet, freqs)
    if len(alphabet) == 1:
        return head
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(ranks.astype(np.int32), _rans_model(freqs, p))
    return head + coder.get_compressed().astype("<u4").tobytes()


def _read_alphabet(payload: bytes, pos: int, k: int) -> tuple[np.ndarray, int]:
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


def _read_freq_field(payload: bytes, pos: int, k: int, precision: int) -> tuple[np.ndarray, int]:
    """Parse k frequencies summing to 2**precision at ``pos``; return (frequencies, end position), validated."""
    from pipeline.entropy import rans_kernels

    if k == 1:
        return np.array([1 << precision], dtype=np.int64), pos
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


def _rans_read_table(payload: bytes, pos: int, k: int, precision: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse alphabet and frequencies at ``pos``; return (alphabet, frequencies, end position), validated."""
    alphabet, pos = _read_alphabet(payload, pos, k)
    freqs, pos = _read_freq_field(payload, pos, k, precision)
    return alphabet, freqs, pos


def _rans_decode(payload: bytes, n: int) -> bytes:
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
    alphabet, freqs, table_end = _rans_read_table(payload, _RANS_HEAD.size, k, precision)
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


CODERS.add("rans", Coder("rans", 2, _rans_encode, _rans_decode, speed=1))


# --------------------------------------------------------------------------------------------- rans16 (compiled)
def _rans16_head(payload: bytes, n: int, name: str) -> tuple[int, int, np.ndarray, int]:
    """Validate the head shared by ``rans16`` and ``rans16ch``: (precision, k, alphabet, position after it)."""
    if len(payload) < 3:
        raise ContainerError(f"{name} payload too short for its head ({len(payload)} bytes)")
    precision, k = payload[0], payload[1] + 1
    if not 8 <= precision <= RANS_PRECISION:
        raise ContainerError(f"{name} precision {precision} outside 8..{RANS_PRECISION}")
    count, pos = _read_uleb(payload, 2, f"{name} payload")
    if count != n:
        raise ContainerError(f"{name} payload holds {count} symbols, container record says {n}")
    alphabet, pos = _read_alphabet(payload, pos, k)
    return precision, k, alphabet, pos


def _rans16_words(freqs: np.ndarray, ranks: np.ndarray, tables: np.ndarray, precision: int) -> bytes:
    """The coded part shared by ``rans16`` and ``rans16ch``: two final states, then the words in decode order."""
    from pipeline.entropy import rans_kernels

    cums = np.concatenate([np.zeros((len(freqs), 1), np.int64), np.cumsum(freqs, 1)[:, :-1]], 1)
    words = np.empty(ranks.size + 1, dtype=np.uint16)  # at most one word per symbol
    s0, s1, first = rans_kernels.encode_words(ranks.astype(np.uint8), tables.astype(np.uint8), freqs, cums,
                                              precision, words)
    return struct.pack("<II", int(s0), int(s1)) + words[first:].astype("<u2").tobytes()


def _rans16_decode_words(payload: bytes, pos: int, n: int, name: str, alphabet: np.ndarray, freqs: list[np.ndarray],
                         precision: int, counts: list[int], lengths: list[int], index: np.ndarray, bits: int) -> bytes:
    """Decode the coded part at ``pos`` with tables ``freqs`` and segments (runs, packed table indices); validated."""
    from pipeline.entropy import rans_kernels

    rest = len(payload) - pos
    if rest < 8 or rest % 2:
        raise ContainerError(f"{name} stream of {rest} bytes is not two 4-byte states plus 16-bit words")
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


def _rans16_encode(symbols: bytes, **_: Any) -> bytes:
    x = np.frombuffer(bytes(symbols), dtype=np.uint8)
    if x.size == 0:
        return b""
    alphabet, ranks, p, freqs = _static_model(x)
    head = bytes([p, len(alphabet) - 1]) + _uleb(x.size) + _rans_table(alphabet, freqs)
    if len(alphabet) == 1:
        return head
    return head + _rans16_words(freqs[None], ranks, np.zeros(x.size, np.uint8), p)


def _rans16_decode(payload: bytes, n: int) -> bytes:
    if n == 0:
        if payload:
            raise ContainerError(f"rans16 payload for 0 symbols must be empty, has {len(payload)} bytes")
        return b""
    precision, k, alphabet, pos = _rans16_head(payload, n, "rans16")
    freqs, pos = _read_freq_field(payload, pos, k, precision)
    if k == 1:
        if pos != len(payload):
            raise ContainerError(f"rans16 one-symbol payload has {len(payload) - pos} unexpected trailing bytes")
        return bytes(alphabet) * n
    # One table, one segment of all n symbols.
    return _rans16_decode_words(payload, pos, n, "rans16", alphabet, [freqs], precision, [1], [n],
                                np.zeros(0, np.uint8), 0)


CODERS.add("rans16", Coder("rans16", 5, _rans16_encode, _rans16_decode, speed=0))


# ------------------------------------------------------------------------------------ rans16ch (per-channel models)
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
        bits += 8 * sum(len(_freq_field(f)) for f in freqs) + nseg * (tables - 1).bit_length()
        if best is None or bits < best[0]:
            best = (bits, assign, freqs)
    assert best is not None
    return best[1], best[2]


def _rans16ch_encode(symbols: bytes, segments: Any = None, **_: Any) -> bytes:
    x = np.frombuffer(bytes(symbols), dtype=np.uint8)
    if x.size == 0:
        return b""
    counts = np.bincount(x, minlength=256)
    alphabet = np.flatnonzero(counts).astype(np.uint8)
    k = len(alphabet)
    p = rans_precision(x.size)
    head = bytes([p, k - 1]) + _uleb(x.size) + _alphabet_bytes(alphabet)
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
    head += bytes([tables]) + b"".join(_freq_field(f) for f in freqs)
    head += _uleb(len(runs)) + b"".join(_uleb(c) + _uleb(m) for c, m in runs)
    if b:
        head += pack_bits(assign, np.full(len(assign), b))
    return head + _rans16_words(freqs, ranks, np.repeat(assign, seg_len), p)


def _rans16ch_decode(payload: bytes, n: int) -> bytes:
    if n == 0:
        if payload:
            raise ContainerError(f"rans16ch payload for 0 symbols must be empty, has {len(payload)} bytes")
        return b""
    precision, k, alphabet, pos = _rans16_head(payload, n, "rans16ch")
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
        f, pos = _read_freq_field(payload, pos, k, precision)
        freqs.append(f)
    nruns, pos = _read_uleb(payload, pos, "rans16ch runs")
    if nruns < 1 or 2 * nruns > len(payload) - pos:
        raise ContainerError(f"rans16ch: {nruns} segment runs do not fit the payload")
    counts, lengths, covered = [], [], 0
    for _ in range(nruns):
        c, pos = _read_uleb(payload, pos, "rans16ch run count")
        m, pos = _read_uleb(payload, pos, "rans16ch run length")
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
    return _rans16_decode_words(payload, pos, n, "rans16ch", alphabet, freqs, precision, counts, lengths, index, b)


CODERS.add("rans16ch", Coder("rans16ch", 6, _rans16ch_encode, _rans16ch_decode, speed=0))


# --------------------------------------------------------------------------------------------------------- planes
def _planes_encode(symbols: bytes, itemsize: int = 1, level: int = 19, **_: Any) -> bytes:
    data = bytes(symbols)
    s = int(itemsize) if 1 <= int(itemsize) <= 8 and len(data) % int(itemsize) == 0 else 1
    planes = np.frombuffer(data, dtype=np.uint8).reshape(-1, s).T
    coded = [encode_auto(planes[j].tobytes(), zstd_level=level) for j in range(s)]
    return bytes([s]) + b"".join(_PLANE_ENTRY.pack(c.id, len(p)) for c, p in coded) + b"".join(p for _, p in coded)


def _planes_decode(payload: bytes, n: int) -> bytes:
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
    out = np.empty((n // s, s), dtype=np.uint8)
    for j, (cid, length) in enumerate(entries):
        if cid == PLANES_ID:
            raise ContainerError("planes payload: a plane cannot itself be coded as planes")
        plane = coder_by_id(cid).decode(payload[pos:pos + length], n // s)
        if len(plane) != n // s:
            raise ContainerError(f"planes payload: plane {j} decoded to {len(plane)} bytes, expected {n // s}")
        out[:, j] = np.frombuffer(plane, dtype=np.uint8)
        pos += length
    return out.tobytes()


PLANES_ID = 4
CODERS.add("planes", Coder("planes", PLANES_ID, _planes_encode, _planes_decode, speed=0))


def order0_entropy(symbols: bytes | np.ndarray) -> float:
    """Order-0 (memoryless) Shannon entropy of a byte sequence, in bits per symbol (0 for empty input)."""
    x = np.frombuffer(bytes(symbols), dtype=np.uint8) if not isinstance(symbols, np.ndarray) else symbols.view(np.uint8)
    if x.size == 0:
        return 0.0
    p = np.bincount(x.ravel(), minlength=256).astype(np.float64)
    p = p[p > 0] / x.size
    return max(0.0, float(-(p * np.log2(p)).sum()))  # max(): no -0.0 for one-symbol input


def encode_auto(symbols: bytes, zstd_level: int = 19, itemsize: int = 1,
                tolerance: tuple[int, int] = AUTO_TOLERANCE, min_saving: int = AUTO_MIN_SAVING,
                candidates: tuple[str, ...] | None = None, segments: Any = None) -> tuple[Coder, bytes]:
    """Encode with every coder and keep the smallest payload, unless a fast coder is nearly as small.

    The smallest payload wins, except that when it is a slow one (constriction's rANS: ~45 MB/s against 200+ MB/s for
    the others)
    the smallest *fast* payload wins if it is at most ``tolerance`` (a fraction num/den, integer arithmetic) or at most
    ``min_saving`` bytes larger. So the result is never more than max(``tolerance``, ``min_saving`` bytes) above the
    smallest, and rANS is kept only where it saves more. Ties go to the smaller payload, then the lower id. Sizes only,
    never timings: the choice is deterministic. ``planes`` is tried when ``itemsize`` > 1. ``candidates`` limits the
    coders tried (default: every registered coder). ``segments``, ``(count, length)`` runs of consecutive segments
    (e.g. the output channels of each tensor in a stream), lets ``rans16ch`` give segments tables of their own.
    """
    num, den = tolerance
    results = []
    for name in candidates if candidates is not None else CODERS.names():
        c = CODERS.get(name)
        if c.id == PLANES_ID and itemsize <= 1:
            continue
        results.append((c, c.encode(symbols, level=zstd_level, itemsize=itemsize, segments=segments)))
    smallest = min(len(p) for _, p in results)
    near = [(c, p) for c, p in results if len(p) * den <= smallest * (den + num) or len(p) <= smallest + min_saving]
    return min(near, key=lambda cp: (cp[0].speed, len(cp[1]), cp[0].id))


def model_bytes(coder: Coder, payload: bytes, symbols: bytes) -> int:
    """Bytes of ``payload`` that describe the model (heads, alphabets, frequency tables, Huffman code lengths, segment
    runs and table indices) rather than the data; ``symbols`` is what the payload decodes to.

    For statistics only (the "plus tables" part of the order-0 comparison): exact for ``rans``, ``rans16``,
    ``rans16ch`` and ``huffman`` (its DEFLATE header recomputed from the symbols, the encoder being deterministic);
    0 for coders without a separate model (``raw``, ``zstd``, ``planes``).
    """
    try:
        if coder.name == "rans":
            _, k1, _ = _RANS_HEAD.unpack_from(payload, 0)
            return _rans_read_table(payload, _RANS_HEAD.size, k1 + 1, payload[0])[2]
        if coder.name in ("rans16", "rans16ch"):
            k = payload[1] + 1
            _, pos = _read_uleb(payload, 2, "")
            if coder.name == "rans16":
                return _rans_read_table(payload, pos, k, payload[0])[2]
            _, pos = _read_alphabet(payload, pos, k)
            if k == 1:
                return pos
            tables, pos = payload[pos], pos + 1
            for _ in range(tables):
                pos = _read_freq_field(payload, pos, k, payload[0])[1]
            nruns, pos = _read_uleb(payload, pos, "")
            nseg = 0
            for _ in range(nruns):
                c, pos = _read_uleb(payload, pos, "")
                pos = _read_uleb(payload, pos, "")[1]
                nseg += c
            return pos + ((nseg * (tables - 1).bit_length() + 7) >> 3)
        if coder.name == "huffman":
            m = payload[0]
            _, pos = _read_uleb(payload, 1, "")
            if m == 0:
                return len(payload)
            x = np.frombuffer(bytes(symbols), dtype=np.uint8)
            tokens = x
            if m >= 2:
                alphabet = np.flatnonzero(np.bincount(x, minlength=256)).astype(np.uint8)
                tokens = _pack_tokens(x, alphabet, m)
                pos += 1 + len(alphabet)
            return pos + (sum(_deflate_header(_literal_lengths(tokens))[1]) + 7) // 8
    except (ContainerError, IndexError, struct.error, ValueError):
        return 0
    return 0
