"""Low-rank factorization: formats (the maths, modules and ONNX chains), rank selectors, the plan types, module
swapping (torch path), graph rewriting (ONNX path), measured latency.

Importing this package registers every format (``formats.FORMATS``) and selector (``ranks.SELECTORS``; the
model-scope ``budget`` and ``search`` selectors register themselves from :mod:`pipeline.factorize.budget` and
:mod:`pipeline.factorize.search`).
"""
from __future__ import annotations

from pipeline.factorize import formats as formats  # noqa: F401  (registers the formats)
from pipeline.factorize import ranks as ranks  # noqa: F401  (registers the per-layer selectors)
from pipeline.factorize import budget as budget  # noqa: F401  (registers the model-scope selector)
from pipeline.factorize import search as search  # noqa: F401  (registers the default rank search)
from pipeline.factorize.formats import FORMATS, Format
from pipeline.factorize.plan import LayerReport, Plan, out_of_reach_macs
from pipeline.factorize.ranks import SELECTORS, ModelSelector, align_rank, effective_rank, vbmf_rank

__all__ = ["FORMATS", "Format", "LayerReport", "ModelSelector", "Plan", "SELECTORS", "align_rank", "effective_rank",
           "out_of_reach_macs", "vbmf_rank"]
