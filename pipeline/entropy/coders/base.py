"""The coder descriptor every coder module exports as ``CODER`` (what the registry maps ids and names to).

A coder maps ``bytes -> bytes`` and back. Every decoder is *bounded*: it is told exactly how many symbols (bytes) to
produce, checks before allocating that its payload can hold that many (each coder's largest possible expansion, see
its module), and raises :class:`~pipeline.errors.ContainerError` if the payload does not decode to exactly that many
or is not fully consumed. Coder ids are stable on-disk ids; never renumber them. Multi-byte integers are
little-endian; bit fields are packed LSB-first (the DEFLATE bit order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Coder:
    """A coder, as its module describes it.

    Attributes:
        name: registry name ("raw", "zstd", "huffman", "rans", "rans16", "rans16ch", "planes").
        id: stable on-disk id stored in the container.
        encode: ``encode(symbols: bytes, **opts) -> bytes`` (deterministic: same input and opts, same bytes). Options
            a coder does not use are ignored: ``level`` (zstd level), ``itemsize`` (planes), ``segments`` (rans16ch).
        decode: ``decode(payload: bytes, n: int) -> bytes``, exactly ``n`` bytes or ContainerError.
        model_bytes: ``model_bytes(payload, symbols) -> int``: bytes of the payload that describe the model (heads,
            alphabets, frequency tables, code lengths) rather than the data; statistics only.
        speed: decode-speed class: 0 = fast (C or compiled decoders, hundreds of MB/s or more), 1 = slow (rANS, tens
            of MB/s); ``auto`` prefers the fast class (see :mod:`.auto`).
        wide_only: ``auto`` tries it only for values wider than one byte (``planes``).
    """

    name: str
    id: int
    encode: Callable[..., bytes]
    decode: Callable[[bytes, int], bytes]
    model_bytes: Callable[[bytes, bytes], int]
    speed: int = 0
    wide_only: bool = False
