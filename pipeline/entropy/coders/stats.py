"""Statistics of byte sequences that the coders are measured against (order-0 entropy)."""
from __future__ import annotations

import numpy as np


def order0_entropy(symbols: bytes | np.ndarray) -> float:
    """Order-0 (memoryless) Shannon entropy of a byte sequence, in bits per symbol (0 for empty input)."""
    x = np.frombuffer(bytes(symbols), dtype=np.uint8) if not isinstance(symbols, np.ndarray) else symbols.view(np.uint8)
    if x.size == 0:
        return 0.0
    p = np.bincount(x.ravel(), minlength=256).astype(np.float64)
    p = p[p > 0] / x.size
    return max(0.0, float(-(p * np.log2(p)).sum()))  # max(): no -0.0 for one-symbol input
