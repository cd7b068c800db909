"""Which tensors share one coded stream in the LRDC container (the packer's plan; the reader does not need it).

A stream is coded with one frequency table (or one Huffman code), so every stream pays for its table and its
header record. A small CIFAR ResNet has ~60 weight tensors of 250-2300 symbols: coded one by one, the tables alone
cost 0.25-0.45 bit per weight (measured: 7 % above the order-0 entropy on resnet20 at 4 bits). Pooling tensors whose
symbol statistics agree saves those tables at the price of coding each member with the pooled statistics (its
cross-entropy; the Kullback-Leibler divergence is the extra cost). :func:`plan_streams` merges greedily while the
estimated size falls, the classic agglomerative scheme with this cost.

Cost model of a candidate stream, in bits: for each byte plane of its values (one plane for bytes; ``itemsize``
planes for wider values, which the ``planes`` coder codes one by one), the order-0 entropy of the pooled plane plus a
table estimate, plus a fixed per-stream cost (header record). Only values of the same item size are pooled, so a
stream's ``planes`` split stays meaningful. The estimate only steers the merging; the packer encodes the plan and
keeps it only if it is no larger than one stream per tensor (see ``container.pack_onnx``).
"""
from __future__ import annotations

import numpy as np

# Estimated bytes of one stream's header record (JSON, zstd-coded) and of a rANS table's head (precision, alphabet
# size, symbol count, two final states). The table itself is estimated from the container's table format below.
STREAM_RECORD_BYTES = 12.0
_TABLE_HEAD_BYTES = 12.0


def plane_histograms(raw: bytes, itemsize: int) -> np.ndarray:
    """(itemsize, 256) int64 histogram of each byte plane of ``raw`` (values of ``itemsize`` bytes)."""
    x = np.frombuffer(raw, dtype=np.uint8).reshape(-1, itemsize)
    return np.stack([np.bincount(x[:, j], minlength=256) for j in range(itemsize)]).astype(np.int64)


def _entropy_bits(h: np.ndarray) -> np.ndarray:
    """Order-0 information in bits of histograms ``h`` (..., 256), summed over the last axis: n*H."""
    n = h.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(h > 0, h * np.log2(np.where(h > 0, n / np.maximum(h, 1), 1.0)), 0.0)
    return t.sum(axis=-1)


def table_bytes(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Estimated bytes of a rANS table for k symbols out of n (the ``rans16`` layout, :mod:`.coders`).

    Precision p = clamp(bit_length(n) - 3, 8, 15); the alphabet is k bytes (a 32-byte bitmap above 32 symbols); each
    frequency is a 4-bit length plus about p - log2(k) - 1 mantissa bits (frequencies average 2**p / k). Within
    ~10 % of measured tables for 4- and 8-bit weight tensors of 144-4608 symbols.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    p = np.clip(np.floor(np.log2(np.maximum(n, 1))) + 1 - 3, 8, 15)
    mant = np.maximum(0.0, p - np.log2(np.maximum(k, 1)) - 1)
    size = _TABLE_HEAD_BYTES + np.minimum(k, 32) + k * (4 + mant) / 8
    return np.where(k > 0, size, 0.0)


def stream_cost_bits(h: np.ndarray) -> np.ndarray:
    """Estimated coded bits of a stream with plane histograms ``h`` (..., itemsize, 256)."""
    table = table_bytes((h > 0).sum(axis=-1), h.sum(axis=-1))
    return (_entropy_bits(h) + 8.0 * table).sum(axis=-1) + 8.0 * STREAM_RECORD_BYTES


def plan_streams(items: list[tuple[bytes, int]]) -> list[list[int]]:
    """Partition items ``(raw bytes, itemsize)`` into streams: lists of item indices, each in ascending order.

    Items of different item sizes are never pooled. Deterministic: same input, same plan (ties go to the lowest
    indices). Greedy agglomerative merging, O(n^2) cost evaluations per item size, vectorised over candidates.
    """
    groups: list[list[int]] = []
    for size in sorted({s for _, s in items}):
        idx = [i for i, (_, s) in enumerate(items) if s == size]
        groups += _agglomerate(idx, [plane_histograms(items[i][0], size) for i in idx])
    return sorted(groups, key=lambda g: g[0])


def _agglomerate(idx: list[int], hists: list[np.ndarray]) -> list[list[int]]:
    """Merge the pair with the largest estimated saving until no merge saves anything."""
    members = [[i] for i in idx]
    h = np.stack(hists).astype(np.int64)  # (m, itemsize, 256)
    cost = stream_cost_bits(h)
    alive = np.ones(len(members), dtype=bool)
    # gain[a, b] = cost[a] + cost[b] - cost(a merged with b), for a < b; -inf elsewhere.
    gain = np.full((len(members), len(members)), -np.inf)
    for a in range(len(members) - 1):
        gain[a, a + 1:] = cost[a] + cost[a + 1:] - stream_cost_bits(h[a][None] + h[a + 1:])
    while len(members) > 1:
        a, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if not gain[a, b] > 0:
            break
        members[a] = sorted(members[a] + members[b])
        h[a] += h[b]
        cost[a] = stream_cost_bits(h[a][None])[0]
        alive[b] = False
        gain[b, :] = -np.inf
        gain[:, b] = -np.inf
        others = np.flatnonzero(alive)
        others = others[others != a]
        merged = cost[a] + cost[others] - stream_cost_bits(h[a][None] + h[others])
        lo, hi = np.minimum(others, a), np.maximum(others, a)
        gain[lo, hi] = merged
    return [m for m, keep in zip(members, alive) if keep]
