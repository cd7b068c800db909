"""The pipeline's stages, one module each, registered in run order by the imports below.

baseline -> factorize -> finetune -> export -> quantize -> entropy-code -> benchmark

Every stage reads only its declared inputs and config (``pipeline.stage_api.stage``), writes only into
``ctx.out_dir``, and validates its own output.
"""
from __future__ import annotations

from pipeline.stages import baseline, factorize, finetune, export, quantize, entropy_code, benchmark  # noqa: F401  (order = run order)

__all__ = ["baseline", "factorize", "finetune", "export", "quantize", "entropy_code", "benchmark"]
