"""Finetuning of factorized models: the dispatcher. The job/result types and the method registry live in
``pipeline.finetune.job`` (re-exported here).

Methods (``pipeline/finetune/methods``, described in ``docs/methods.md``):

* ``kd`` — cross-entropy + temperature-scaled distillation from the dense teacher (+ optional feature matching).
* ``svd_training`` — Yang et al. 2020: train ``U diag(|s|) V`` with orthogonality + sparsity, prune, finetune.
* ``lra`` — Lee et al. 2019: dense training with a low-rank projection every ``period`` steps, then truncation.
* ``elrt`` — Sui et al. 2024: Tucker-2 training with the double soft orthogonality penalty.
* ``none`` — the student unchanged, only evaluated.

``finetune(job)`` dispatches on ``job.cfg.method``; ``cfg.nproc > 1`` runs the method data-parallel under
``torchrun`` (``pipeline.finetune.ddp``).
"""
from __future__ import annotations

from pipeline.finetune.ddp import run_ddp
from pipeline.finetune.job import FINETUNE_METHODS, FinetuneJob, FinetuneResult
from pipeline.finetune.methods import count_macs_params


def finetune(job: FinetuneJob) -> FinetuneResult:
    """Run ``job.cfg.method`` on the job (data-parallel under torchrun when ``job.cfg.nproc > 1``).

    Adds ``macs``/``params`` of the result to the metrics when ``job.example_input`` is given and the factorize
    subsystem's counter is available.

    Raises:
        ConfigError: unknown method, or ``nproc > 1`` without ``job.model_spec``.
    """
    method = FINETUNE_METHODS.get(job.cfg.method)  # unknown names fail before any work
    if job.cfg.nproc > 1 and job.cfg.method != "none":
        result = run_ddp(job)
    else:
        result = method(job)
    result.model.eval()
    if job.example_input is not None:
        counted = count_macs_params(result.model, job.example_input.to(job.device))
        if counted is not None:
            result.metrics["macs"], result.metrics["params"] = counted
    return result


__all__ = ["FINETUNE_METHODS", "FinetuneJob", "FinetuneResult", "finetune"]
