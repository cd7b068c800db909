"""Distillation losses for unlabelled data: the student matches the original's raw outputs, not argmax pseudo-labels.

Per output kind (tensors in the model's layout; :class:`~pipeline.heads.kinds.HeadSpec` says how to read them):

* classify, sequence, and dense maps with C > 1: KL(teacher || student) of the class distributions at every
  position (sample; sample and time step; sample and pixel), averaged over positions, times ``T^2`` at temperature
  ``T`` (Hinton et al. 2015). Logits and log-probabilities go through ``log_softmax``; probabilities through ``log``
  first, so a model ending in ``softmax`` or ``log_softmax`` distils as well as one ending in raw logits;
* dense maps with C == 1: binary cross-entropy on probability maps (the teacher's probability is the soft target),
  mean squared error on logit/score maps;
* embedding: ``1 - cosine`` (direction) plus mean squared error (scale), per sample, averaged.

Several outputs: the mean of the outputs' losses.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.heads.kinds import HeadSpec

_PROB_FLOOR = 1e-7  # log(0) guard for probability outputs (also keeps BCE finite at saturated teachers)


def _log_probs(x: Tensor, values: str, dim: int, temperature: float) -> Tensor:
    if values == "prob":
        x = torch.log(x.clamp_min(_PROB_FLOOR))
    return F.log_softmax(x / temperature, dim=dim)


def kl_per_position(student: Tensor, teacher: Tensor, dim: int, values: str = "logit",
                    temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(teacher || student)`` over ``dim``, averaged over every other position."""
    t = float(temperature)
    log_s = _log_probs(student, values, dim, t)
    log_t = _log_probs(teacher.detach(), values, dim, t)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=dim)
    return kl.mean() * (t * t)


def single_map_loss(student: Tensor, teacher: Tensor, values: str = "logit") -> Tensor:
    """BCE against the teacher's probabilities for probability maps; MSE for logit or score maps."""
    if values == "prob":
        s = student.clamp(_PROB_FLOOR, 1.0 - _PROB_FLOOR)
        return F.binary_cross_entropy(s, teacher.detach().clamp(0.0, 1.0))
    return F.mse_loss(student, teacher.detach())


def embedding_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over samples of ``1 - cos(student, teacher)`` plus the mean squared error."""
    s, t = student.reshape(len(student), -1), teacher.detach().reshape(len(teacher), -1)
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean() + F.mse_loss(s, t)


def head_loss(spec: HeadSpec, student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """The distillation loss of one output of kind ``spec.kind`` (tensors in the model's layout)."""
    s, t = spec.canonical(student), spec.canonical(teacher)
    if spec.kind == "embedding":
        return embedding_loss(s, t)
    if spec.kind == "dense" and s.shape[1] == 1:
        return single_map_loss(s, t, spec.values)
    dim = -1 if spec.kind == "sequence" else 1
    return kl_per_position(s, t, dim, spec.values, temperature)


def _as_list(x: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


def distill_loss(specs: Sequence[HeadSpec], student_out: Tensor | Sequence[Tensor],
                 teacher_out: Tensor | Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    """Mean of :func:`head_loss` over the outputs (a single tensor, or a tuple in output order)."""
    s, t = _as_list(student_out), _as_list(teacher_out)
    if not (len(s) == len(t) == len(specs)):
        raise ValueError(f"distill_loss: {len(specs)} heads, {len(s)} student and {len(t)} teacher outputs")
    return torch.stack([head_loss(h, a, b, temperature) for h, a, b in zip(specs, s, t)]).mean()


def distill_loss_fn(specs: Sequence[HeadSpec], temperature: float = 1.0) -> Callable[..., Tensor]:
    """``loss(student_out, teacher_out)`` for a training loop (the heads fixed once, from the model card)."""
    specs = list(specs)

    def loss(student_out: Tensor | Sequence[Tensor], teacher_out: Tensor | Sequence[Tensor]) -> Tensor:
        return distill_loss(specs, student_out, teacher_out, temperature)

    return loss
