"""Literal-only DEFLATE (RFC 1951) blocks: the entropy coding inside the ``huffman`` coder.

The encoder writes one final dynamic-Huffman block holding only literals (no length/distance codes), with an optimal
length-limited (<= 15 bits, package-merge) canonical code; decoding is zlib's inflate, so any valid DEFLATE stream is
accepted. Code lengths, canonical codes and bit packing are integer arithmetic (the same bytes on every platform);
DEFLATE decoding is specified bit-exactly by RFC 1951.

Largest expansion (used to bound a declared size before inflating): a DEFLATE code is at least one bit, and the
longest match (258 bytes, length code 285, no extra bits) with the shortest distance code costs at least two bits,
so a stream of ``L`` bytes inflates to at most ``MAX_RATIO * L`` bytes.
"""
from __future__ import annotations

import zlib

import numpy as np

from pipeline.entropy.coders.bits import BitWriter
from pipeline.errors import ContainerError

HUFFMAN_MAX_BITS = 15  # DEFLATE's limit for literal/length codes
ENCODE_CHUNK = 1 << 20  # codes are written in chunks: bounded int64 scratch whatever the tensor size
MAX_RATIO = 1032  # 258 bytes per 2 bits: the most a DEFLATE stream can expand


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


def deflate_header(lens: np.ndarray) -> tuple[list[int], list[int]]:
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


def literal_lengths(tokens: np.ndarray) -> np.ndarray:
    counts = np.bincount(tokens, minlength=257).astype(np.int64)
    counts[256] = 1  # end-of-block
    return code_lengths(counts, HUFFMAN_MAX_BITS)


def deflate_literals(tokens: np.ndarray) -> bytes:
    """One final dynamic-Huffman DEFLATE block holding ``tokens`` (uint8) as literals, then end-of-block."""
    tokens = np.asarray(tokens, dtype=np.uint8)
    lens = literal_lengths(tokens)
    assert int((np.int64(1) << (HUFFMAN_MAX_BITS - lens[lens > 0])).sum()) == 1 << HUFFMAN_MAX_BITS  # complete
    codes = canonical_codes(lens)
    # 257 literal/length code lengths (no length codes used) and a single distance code of length 0 ("no distances").
    head_v, head_w = deflate_header(lens)
    bw = BitWriter()
    bw.write(head_v, head_w)
    for i in range(0, len(tokens), ENCODE_CHUNK):
        t = tokens[i:i + ENCODE_CHUNK]
        bw.write(codes[t], lens[t])
    bw.write(codes[256:257], lens[256:257])
    return bw.getvalue()


def inflate_exact(stream: bytes, n: int) -> bytes:
    """Inflate a raw DEFLATE stream that must produce exactly ``n`` bytes, end there and leave no trailing bytes."""
    if n > MAX_RATIO * len(stream):
        raise ContainerError(f"huffman stream of {len(stream)} bytes cannot inflate to {n} bytes (DEFLATE expands at "
                             f"most {MAX_RATIO}x)")
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
