"""The packer's in-memory forms: a record to store (with its lossless storage narrowing) and a coded stream."""
from __future__ import annotations

import numpy as np

from pipeline.entropy.coders import Coder
from pipeline.entropy.container.format import NARROWINGS, le


def narrow(arr: np.ndarray) -> np.ndarray:
    """The smallest lossless storage form of ``arr`` (see module docstring); ``arr`` itself when none applies."""
    name = arr.dtype.name
    if name == "float32" and arr.size:
        with np.errstate(over="ignore"):  # values beyond fp16's range become inf and fail the comparison below
            h = arr.astype(np.float16)
        # Bitwise comparison: -0.0, NaN payloads and infinities must survive exactly.
        if np.array_equal(h.astype(np.float32).view(np.uint32), arr.view(np.uint32)):
            return h
    elif name in ("int64", "int32") and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        for cand in NARROWINGS[name][::-1]:
            info = np.iinfo(cand)
            if info.min <= lo and hi <= info.max:
                return arr.astype(cand)
    return arr


class Item:
    """One record to store: logical array, its lossless storage form and the stored little-endian bytes."""

    def __init__(self, name: str, arr: np.ndarray) -> None:
        self.name, self.arr = name, arr
        self.stored = narrow(arr)
        self.raw = self.stored.astype(le(self.stored.dtype.name), copy=False).tobytes()
        self.itemsize = self.stored.dtype.itemsize


class Stream:
    """One coded payload: the concatenated stored bytes of ``members`` (item indices, ascending)."""

    def __init__(self, members: list[int], coder: Coder, payload: bytes, nbytes: int) -> None:
        self.members, self.coder, self.payload, self.nbytes = members, coder, payload, nbytes
