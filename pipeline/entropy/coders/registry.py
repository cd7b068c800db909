"""The coder registry: on-disk id and name -> the coder its module describes (``module.CODER``).

Registration order is the order ``list coders`` prints and ``auto`` tries. Adding a coder: write a module with
``encode``, ``decode``, ``model_bytes``, its wire format in the module docstring and ``CODER``, with a new id; add it
below. Never renumber ids.
"""
from __future__ import annotations

from typing import Any

from pipeline.entropy.coders.auto import AUTO_MIN_SAVING, AUTO_TOLERANCE, encode_best
from pipeline.entropy.coders.base import Coder
from pipeline.entropy.coders.huffman import CODER as HUFFMAN
from pipeline.entropy.coders.planes import CODER as PLANES
from pipeline.entropy.coders.rans import CODER as RANS
from pipeline.entropy.coders.rans16 import CODER as RANS16
from pipeline.entropy.coders.rans16ch import CODER as RANS16CH
from pipeline.entropy.coders.raw import CODER as RAW
from pipeline.entropy.coders.zstd import CODER as ZSTD
from pipeline.errors import ContainerError
from pipeline.registry import Registry

CODERS: Registry[Coder] = Registry("coder")
for _c in (RAW, ZSTD, HUFFMAN, RANS, RANS16, RANS16CH, PLANES):
    CODERS.add(_c.name, _c)
del _c
_BY_ID = {CODERS.get(n).id: CODERS.get(n) for n in CODERS.names()}
assert len(_BY_ID) == len(CODERS.names()), "coder ids must be unique"


def coder_by_id(cid: int) -> Coder:
    """The coder with on-disk id ``cid``, or ContainerError naming the known ids."""
    try:
        return _BY_ID[cid]
    except (KeyError, TypeError):
        known = ", ".join(f"{c.id}={c.name}" for c in _BY_ID.values())
        raise ContainerError(f"unknown coder id {cid!r} in container; known ids: {known}") from None


def encode_auto(symbols: bytes, zstd_level: int = 19, itemsize: int = 1,
                tolerance: tuple[int, int] = AUTO_TOLERANCE, min_saving: int = AUTO_MIN_SAVING,
                candidates: tuple[str, ...] | None = None, segments: Any = None) -> tuple[Coder, bytes]:
    """The ``auto`` choice (:mod:`.auto`) among ``candidates`` (names; default every registered coder).

    ``planes`` is tried when ``itemsize`` > 1. ``segments``, ``(count, length)`` runs of consecutive segments (e.g.
    the output channels of each tensor in a stream), lets ``rans16ch`` give segments tables of their own.
    """
    coders = [CODERS.get(n) for n in (candidates if candidates is not None else CODERS.names())]
    return encode_best(symbols, coders, zstd_level, itemsize, tolerance, min_saving, segments)


def model_bytes(coder: Coder, payload: bytes, symbols: bytes) -> int:
    """Bytes of ``payload`` that describe the model rather than the data (the coder's own ``model_bytes``).

    For statistics only (the "plus tables" part of the order-0 comparison): exact for ``rans``, ``rans16``,
    ``rans16ch`` and ``huffman``; 0 for coders without a separate model (``raw``, ``zstd``, ``planes``).
    """
    return coder.model_bytes(payload, symbols)
