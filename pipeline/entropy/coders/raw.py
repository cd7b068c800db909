"""``raw`` (id 0): the bytes as they are.

Wire format: the payload *is* the ``n`` symbols (so its length must be exactly ``n``); no model.
"""
from __future__ import annotations

from typing import Any

from pipeline.entropy.coders.base import Coder
from pipeline.errors import ContainerError

ID = 0


def encode(symbols: bytes, **_: Any) -> bytes:
    """The symbols themselves."""
    return bytes(symbols)


def decode(payload: bytes, n: int) -> bytes:
    """Exactly ``n`` bytes: the payload, which must have that length."""
    if len(payload) != n:
        raise ContainerError(f"raw payload has {len(payload)} bytes, expected exactly {n}")
    return bytes(payload)


def model_bytes(payload: bytes, symbols: bytes) -> int:  # noqa: ARG001 - one signature for every coder
    """0: raw has no model."""
    return 0


CODER = Coder("raw", ID, encode, decode, model_bytes, speed=0)
