"""Per-layer weight widths for the smallest coded size within an accuracy budget (``quantize.weight_bits=auto``).

The 8-bit int8 model is the reference. Each weight tensor may move onto a narrower grid (2..7 bits, snapped
inside int8, so the graph and its speed are unchanged); what a narrower grid saves is measured as coded bits
(order-0 entropy of the snapped int8 symbols, what the container's coders reach within a few percent), and what it
costs is measured on data: the relative output error of the whole model with only that layer narrowed.

1. **Path.** From all layers at 8 bits, repeatedly take the one-step narrowing with the least output error per bit
   saved (a greedy rate-distortion descent, as in mixed-precision allocation) down to every layer at the narrowest
   width. Each prefix of the path is a complete bit assignment, smaller than the one before.
2. **Cut.** Binary-search the longest prefix whose model still passes ``accept`` (the real validation accuracy
   against a floor): a handful of full evaluations instead of one per step.

Output errors of single layers do not add up exactly, which is why the cut is checked on the combined model and not
predicted from the per-layer numbers.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np


def entropy_bits(q: np.ndarray) -> float:
    """Order-0 entropy of the values of ``q`` times their count: the coded size of a tensor, in bits."""
    if q.size == 0:
        return 0.0
    _, counts = np.unique(q, return_counts=True)
    p = counts / q.size
    return float(-(counts * np.log2(p)).sum())


def greedy_path(layers: Sequence[str], choices: Sequence[int], rate: Callable[[str, int], float],
                distortion: Callable[[str, int], float]) -> list[dict[str, int]]:
    """Bit assignments from all-widest to all-narrowest, one narrowing per step, least distortion per bit first.

    Args:
        layers: layer names (the order breaks ties, so the path is deterministic).
        choices: allowed widths; the widest is the start and costs no distortion.
        rate: ``rate(layer, bits)`` = coded bits of the layer at that width.
        distortion: ``distortion(layer, bits)`` = measured error with only that layer at that width (called at most
            once per pair).

    Returns:
        ``[start, step1, step2, ...]``; a step that saves no bits is never taken (that layer stops there).
    """
    widths = sorted(set(int(b) for b in choices), reverse=True)
    r_cache: dict[tuple[str, int], float] = {}
    d_cache: dict[tuple[str, int], float] = {}

    def r(k: str, b: int) -> float:
        if (k, b) not in r_cache:
            r_cache[(k, b)] = float(rate(k, b))
        return r_cache[(k, b)]

    def d(k: str, b: int) -> float:
        if b == widths[0]:
            return 0.0
        if (k, b) not in d_cache:
            d_cache[(k, b)] = float(distortion(k, b))
        return d_cache[(k, b)]

    state = {k: widths[0] for k in layers}
    path = [dict(state)]
    stuck: set[str] = set()
    while True:
        best: tuple[float, int, str] | None = None
        for i, k in enumerate(layers):
            if k in stuck:
                continue
            j = widths.index(state[k])
            if j + 1 >= len(widths):
                continue
            nb = widths[j + 1]
            saved = r(k, state[k]) - r(k, nb)
            if saved <= 0:
                stuck.add(k)  # narrower costs as many bits (a constant tensor): nothing to gain further down
                continue
            cost = (d(k, nb) - d(k, state[k])) / saved
            if best is None or (cost, i) < best[:2]:
                best = (cost, i, k)
        if best is None:
            return path
        k = best[2]
        state[k] = widths[widths.index(state[k]) + 1]
        path.append(dict(state))


def longest_accepted(path: Sequence[Mapping[str, int]], accept: Callable[[int], bool]) -> tuple[int, list[dict]]:
    """Index of the longest prefix of ``path`` that ``accept`` (called with a step index) passes (``path[0]`` is
    taken as passing), by bisection.

    Returns:
        ``(index, tries)`` with ``tries = [{"step", "accepted"}, ...]`` in the order evaluated.
    """
    lo, hi = 0, len(path) - 1
    tries: list[dict] = []
    while lo < hi:
        mid = (lo + hi + 1) // 2
        ok = bool(accept(mid))
        tries.append({"step": mid, "accepted": ok})
        if ok:
            lo = mid
        else:
            hi = mid - 1
    return lo, tries
