"""Low-rank factorization: formats (the math and modules), rank selectors, module swapping, measured latency.

Importing this package registers every format (``formats.FORMATS``) and selector (``ranks.SELECTORS``).
"""
from __future__ import annotations

from pipeline.factorize import formats as formats  # noqa: F401  (registers the formats)
from pipeline.factorize import ranks as ranks  # noqa: F401  (registers the selectors)
from pipeline.factorize.formats import FORMATS, Format
from pipeline.factorize.ranks import SELECTORS, align_rank, effective_rank, vbmf_rank

__all__ = ["FORMATS", "Format", "SELECTORS", "align_rank", "effective_rank", "vbmf_rank"]
