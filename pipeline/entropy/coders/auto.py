"""The ``auto`` selection policy: which coder's payload a stream keeps.

Every candidate coder encodes the stream and the smallest payload wins, except that when it is a slow one
(constriction's ``rans``: ~45 MB/s against 200+ MB/s for the others) the smallest *fast* payload wins if it is at most
``AUTO_TOLERANCE`` (a fraction num/den, integer arithmetic) or at most ``AUTO_MIN_SAVING`` bytes larger (a rANS
decode also costs ~30 us of model set-up before the first symbol). So the result is never more than
max(tolerance, min_saving bytes) above the smallest, and a slow coder is kept only where it saves more. Ties go to the
smaller payload, then the lower id. Sizes only, never timings: the choice is deterministic. This module knows
coders only through the candidates it is given (the registry passes all of them, ``planes`` passes its plane coders).
"""
from __future__ import annotations

from typing import Any, Sequence

from pipeline.entropy.coders.base import Coder

AUTO_TOLERANCE = (1, 128)
AUTO_MIN_SAVING = 64


def choose(results: Sequence[tuple[Coder, bytes]], tolerance: tuple[int, int] = AUTO_TOLERANCE,
           min_saving: int = AUTO_MIN_SAVING) -> tuple[Coder, bytes]:
    """The ``(coder, payload)`` the policy keeps among encoded candidates (module docstring)."""
    num, den = tolerance
    smallest = min(len(p) for _, p in results)
    near = [(c, p) for c, p in results if len(p) * den <= smallest * (den + num) or len(p) <= smallest + min_saving]
    return min(near, key=lambda cp: (cp[0].speed, len(cp[1]), cp[0].id))


def encode_best(symbols: bytes, coders: Sequence[Coder], zstd_level: int = 19, itemsize: int = 1,
                tolerance: tuple[int, int] = AUTO_TOLERANCE, min_saving: int = AUTO_MIN_SAVING,
                segments: Any = None) -> tuple[Coder, bytes]:
    """Encode ``symbols`` with each of ``coders`` (``wide_only`` ones only when ``itemsize`` > 1) and :func:`choose`."""
    results = [(c, c.encode(symbols, level=zstd_level, itemsize=itemsize, segments=segments))
               for c in coders if not (c.wide_only and itemsize <= 1)]
    return choose(results, tolerance, min_saving)
