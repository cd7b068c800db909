"""Knowledge distillation from the dense teacher: logit KD (Hinton et al. 2015) and block-output feature matching."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Temperature-scaled distillation ``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch.

    The ``T^2`` factor keeps the gradient magnitude of the soft term comparable to cross-entropy as ``T`` changes.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def distillation_loss(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """``(1 - alpha) * CE + alpha * KD``; plain CE when there is no teacher or ``alpha == 0``.

    Returns:
        The loss and a dict of its parts (floats, for logging).
    """
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha <= 0.0:
        return ce, {"ce": float(ce.detach())}
    kd = kd_loss(student_logits, teacher_logits, temperature)
    loss = (1.0 - alpha) * ce + alpha * kd
    return loss, {"ce": float(ce.detach()), "kd": float(kd.detach())}


class FeatureDistiller:
    """MSE between student and teacher outputs of the top-level children that exist in both with equal shapes.

    Factorization replaces layers *inside* the model, so the top-level children (stages/blocks) keep their names and
    output shapes; those outputs are natural matching points. The last child is skipped because its output is the
    logits, which the KD term already matches. Shapes are checked on every batch (a mismatch is simply not matched),
    so models whose children return tuples or non-tensors are handled by ignoring those children.

    Use as a context manager so the forward hooks never outlive the training run (a returned model must not carry
    hooks: they would hold references to this object and break ``deepcopy``/export).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        s_children = dict(student.named_children())
        t_children = dict(teacher.named_children())
        names = [n for n in s_children if n in t_children]
        self.names = names[:-1] if len(names) > 1 else []
        self._s: dict[str, Tensor] = {}
        self._t: dict[str, Tensor] = {}
        self._handles: list[Any] = []
        for n in self.names:
            self._handles.append(s_children[n].register_forward_hook(self._hook(self._s, n)))
            self._handles.append(t_children[n].register_forward_hook(self._hook(self._t, n)))

    @staticmethod
    def _hook(store: dict[str, Tensor], name: str):  # noqa: ANN205 - hook signature
        def fn(_m: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                store[name] = out

        return fn

    def loss(self) -> Tensor | None:
        """Mean over matched children of ``MSE(student, teacher)`` for the most recent forward passes."""
        terms = []
        for n in self.names:
            s, t = self._s.get(n), self._t.get(n)
            if s is not None and t is not None and s.shape == t.shape:
                terms.append(F.mse_loss(s, t.detach()))
        self._s.clear()
        self._t.clear()
        if not terms:
            return None
        return torch.stack(terms).mean()

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureDistiller":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
