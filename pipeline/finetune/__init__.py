"""Finetuning of factorized models: the job/result types, the method registry and the dispatcher.

Methods (``pipeline/finetune/methods``, see METHODS.md):

* ``kd`` — cross-entropy + temperature-scaled distillation from the dense teacher (+ optional feature matching).
* ``svd_training`` — Yang et al. 2020: train ``U diag(|s|) V`` with orthogonality + sparsity, prune, finetune.
* ``lra`` — Lee et al. 2019: dense training with a low-rank projection every ``period`` steps, then truncation.
* ``elrt`` — Sui et al. 2024: Tucker-2 training with the double soft orthogonality penalty.
* ``none`` — the student unchanged, only evaluated.

``finetune(job)`` dispatches on ``job.cfg.method``; ``cfg.nproc > 1`` runs the method data-parallel under
``torchrun`` (``pipeline.finetune.ddp``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from pipeline.registry import Registry

if TYPE_CHECKING:
    from pipeline.config import FinetuneConfig
    from pipeline.data import DatasetSplits


@dataclass
class FinetuneJob:
    """Everything a finetuning method needs. Methods never mutate any of it (they deep-copy the models).

    Attributes:
        student: the factorized model produced by the factorize stage (described by ``structure``).
        teacher: the original dense trained model (used frozen, in eval mode).
        structure: ``{layer_name: {"format": ..., "ranks": [...]}}`` describing ``student``.
        data: dataset splits (``train`` to train on, ``val`` to select the best checkpoint).
        cfg: the finetune stage configuration.
        seed: run seed.
        device: torch device string.
        progress: show progress bars (stderr).
        example_input: optional ``(1, C, H, W)`` input to count MACs/params of the result.
        align: rank alignment used when a method chooses new ranks (``svd_training``).
        model_spec: model zoo name of ``teacher`` (``pipeline.models.build_model``); required for ``nproc > 1``
            because the worker processes rebuild the models from it (no pickled modules cross processes).
    """

    student: nn.Module
    teacher: nn.Module
    structure: dict[str, dict]
    data: DatasetSplits
    cfg: FinetuneConfig
    seed: int
    device: str = "cpu"
    progress: bool = True
    example_input: torch.Tensor | None = None
    align: int = 8
    model_spec: str | None = None


@dataclass
class FinetuneResult:
    """A method's output.

    Attributes:
        model: the finetuned model (eval mode), factorized as ``structure`` says.
        structure: the structure of ``model`` (methods that choose ranks, like ``svd_training``, change it).
        history: ``{"epochs": [per-epoch dicts], ...}``.
        metrics: at least ``best_val`` and ``seconds``; method-specific entries besides.
    """

    model: nn.Module
    structure: dict[str, dict]
    history: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


FINETUNE_METHODS: Registry[Callable[[FinetuneJob], FinetuneResult]] = Registry("finetune method")


@FINETUNE_METHODS.register("none")
def no_finetune(job: FinetuneJob) -> FinetuneResult:
    """Return (a copy of) the student unchanged, evaluated on the validation split."""
    from pipeline.finetune.trainer import evaluate

    t0 = time.perf_counter()
    model = copy.deepcopy(job.student).to(job.device).eval()
    acc = evaluate(model, job.data.val, device=job.device)
    return FinetuneResult(
        model=model,
        structure=copy.deepcopy(job.structure),
        history={"epochs": [], "best_val": acc},
        metrics={"best_val": acc, "seconds": time.perf_counter() - t0},
    )


def finetune(job: FinetuneJob) -> FinetuneResult:
    """Run ``job.cfg.method`` on the job (data-parallel under torchrun when ``job.cfg.nproc > 1``).

    Adds ``macs``/``params`` of the result to the metrics when ``job.example_input`` is given and the factorize
    subsystem's counter is available.

    Raises:
        ConfigError: unknown method, or ``nproc > 1`` without ``job.model_spec``.
    """
    method = FINETUNE_METHODS.get(job.cfg.method)  # unknown names fail before any work
    if job.cfg.nproc > 1 and job.cfg.method != "none":
        from pipeline.finetune.ddp import run_ddp

        result = run_ddp(job)
    else:
        result = method(job)
    result.model.eval()
    if job.example_input is not None:
        from pipeline.finetune.methods import count_macs_params

        counted = count_macs_params(result.model, job.example_input.to(job.device))
        if counted is not None:
            result.metrics["macs"], result.metrics["params"] = counted
    return result


# Registration of the methods; at the bottom because they import the names defined above.
from pipeline.finetune import methods as _methods  # noqa: E402,F401

__all__ = ["FINETUNE_METHODS", "FinetuneJob", "FinetuneResult", "finetune"]
