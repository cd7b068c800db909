"""Helpers the finetuning methods share: submodule access, the structure rebuild, MAC counting, the distillation
loss and the job's model copies. A leaf module (it imports no method), so each method imports it without a circle."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

from torch import Tensor, nn

from pipeline.factorize.swap import apply_structure as _rebuild_structure
from pipeline.factorize.swap import count_macs_params as _count_macs_params
from pipeline.finetune.distill import FeatureDistiller, distillation_loss
from pipeline.finetune.job import FinetuneJob
from pipeline.finetune.trainer import LossFn, freeze, teacher_logits_fn

if TYPE_CHECKING:
    from pipeline.config import FinetuneConfig


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted path ``name`` (``""`` is the model itself)."""
    return model.get_submodule(name) if name else model


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` by ``new`` (works for Sequential indices too)."""
    parent_name, _, child = name.rpartition(".")
    setattr(get_module(model, parent_name), child, new)


def apply_structure(model: nn.Module, structure: dict[str, dict]) -> nn.Module:
    """``model`` with the structure's layers rebuilt as (uninitialised) factorized modules, ready for a state dict.

    The shape-only rebuild of the factorize subsystem (``swap.apply_structure``); ``model`` itself when nothing is
    factorized.
    """
    if not structure:
        return model
    return _rebuild_structure(model, structure)


def count_macs_params(model: nn.Module, example_input: Tensor) -> tuple[int, int]:
    """``(macs, params)`` per sample, counted by the factorize subsystem's forward hooks."""
    macs, params = _count_macs_params(model, example_input)
    return int(macs), int(params)


def distill_loss_fn(
    cfg: FinetuneConfig,
    teacher: nn.Module | None,
    features: FeatureDistiller | None = None,
    extra: Callable[[], tuple[Tensor, dict[str, float]]] | None = None,
) -> LossFn:
    """``(1 - alpha) CE + alpha KD [+ feature_weight * feature MSE] [+ extra()]`` as a trainer loss function.

    Args:
        cfg: finetune config (alpha, temperature, feature_weight).
        teacher: frozen teacher, or None for plain CE.
        features: an active :class:`FeatureDistiller` (its hooks fill in during the forward passes).
        extra: regularizer closure returning ``(term, parts)`` added to the loss.
    """
    need_teacher = teacher is not None and (cfg.alpha > 0 or features is not None)
    t_fn = teacher_logits_fn(teacher if need_teacher else None)

    def fn(logits: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        t_logits = t_fn(x)  # also runs the teacher-side feature hooks
        loss, parts = distillation_loss(logits, y, t_logits, cfg.alpha, cfg.temperature)
        if features is not None:
            f = features.loss()
            if f is not None:
                loss = loss + cfg.feature_weight * f
                parts["feat"] = float(f.detach())
        if extra is not None:
            term, p = extra()
            loss = loss + term
            parts.update(p)
        return loss, parts

    return fn


def prepare_models(job: FinetuneJob) -> tuple[nn.Module, nn.Module]:
    """Deep copies of ``(student, teacher)`` on the job's device; the teacher frozen in eval mode."""
    student = copy.deepcopy(job.student).to(job.device)
    teacher = freeze(copy.deepcopy(job.teacher).to(job.device))
    return student, teacher
