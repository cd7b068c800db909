"""Finetuning methods (each registers itself in ``FINETUNE_METHODS`` on import) and the helpers they share
(``pipeline.finetune.methods.common``, re-exported here)."""
from __future__ import annotations

# Registration order is listing order: "none" first, as before the split.
from pipeline.finetune.methods import none  # noqa: F401  (registration)
from pipeline.finetune.methods import elrt, kd, lra, svd_training  # noqa: F401  (registration)
from pipeline.finetune.methods.common import (
    apply_structure,
    count_macs_params,
    distill_loss_fn,
    get_module,
    prepare_models,
    set_module,
)

__all__ = [
    "apply_structure",
    "count_macs_params",
    "distill_loss_fn",
    "get_module",
    "prepare_models",
    "set_module",
]
