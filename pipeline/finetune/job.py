"""The finetune job and result types and the method registry: the names every finetuning method and the
dispatcher share. Kept apart from ``pipeline.finetune`` (the dispatcher) so the methods can import them without an
import circle."""
from __future__ import annotations

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

__all__ = ["FINETUNE_METHODS", "FinetuneJob", "FinetuneResult"]
