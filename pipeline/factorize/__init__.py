"""Low-rank factorization: formats (the math and modules), rank selectors, and module swapping."""
from __future__ import annotations

from pipeline.factorize import formats as formats  # noqa: F401  (registers the formats)
