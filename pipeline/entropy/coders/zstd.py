"""``zstd`` (id 1): a Zstandard frame (RFC 8878), decoded at ~1 GB/s; its 11-bit Huffman literals and block headers
cost 1-10 % over the order-0 entropy on weights.

Wire format: one zstd frame holding the ``n`` symbols, with the content size in its header (which must equal ``n``,
checked before decompressing so a forged header cannot make zstd allocate), no checksum (the container has CRC32 and
sha256) and no dictionary; nothing may follow the frame. The encoder is single-threaded at the given level, so its
bytes are deterministic.

Largest expansion: a block holds at most 128 KiB, and the cheapest block (RLE: a 3-byte header and one byte) is
4 bytes, so a payload of ``L`` bytes decodes to at most ``MAX_RATIO * L`` bytes; a larger declared size is rejected
before anything is allocated.
"""
from __future__ import annotations

from typing import Any

import zstandard

from pipeline.entropy.coders.base import Coder
from pipeline.errors import ContainerError

ID = 1
MAX_RATIO = (128 << 10) // 4  # 128 KiB per 4-byte RLE block


def encode(symbols: bytes, level: int = 19, **_: Any) -> bytes:
    """One zstd frame at ``level`` with the content size, no checksum, no dictionary id."""
    c = zstandard.ZstdCompressor(level=int(level), write_content_size=True, write_checksum=False, write_dict_id=False,
                                 threads=0)
    return c.compress(bytes(symbols))


def decode(payload: bytes, n: int) -> bytes:
    """Exactly ``n`` bytes from one zstd frame declaring ``n`` bytes, or ContainerError."""
    if n > MAX_RATIO * len(payload):
        raise ContainerError(f"zstd payload of {len(payload)} bytes cannot hold {n} bytes (zstd expands at most "
                             f"{MAX_RATIO}x)")
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


def model_bytes(payload: bytes, symbols: bytes) -> int:  # noqa: ARG001 - one signature for every coder
    """0: zstd's tables are interleaved with its blocks, not counted separately."""
    return 0


CODER = Coder("zstd", ID, encode, decode, model_bytes, speed=0)
