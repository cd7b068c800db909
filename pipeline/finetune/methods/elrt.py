"""``elrt``: Sui et al. 2024, "Efficient Low-Rank Training for Compact CNNs".

The Tucker-2 factorized *student* is trained directly (no full-size weight exists or is updated) with CE (+KD from
the teacher, ``alpha``) plus the double soft orthogonality penalty on the factor matrices,
``(rho / Phi) * sum_A (||A^T A - I||_F^2 + ||A A^T - I||_F^2)``.

Factor matrices ``A``: inside every layer of the structure, the weights of the 1x1 convs (as ``out x in``
matrices) and of the linears — for Tucker-2 the input projection (c->r1) and the output projection (r2->n); the kxk
core is not a matrix and is not penalised. ``Phi`` is their count. ``elrt.from_scratch`` re-initialises the
factorized layers (PyTorch's default init, seeded) instead of starting from the decomposition, as in the paper's
training from scratch; the rest of the network keeps its weights.

The history records ``ortho_penalty`` (``(1/Phi) sum_A ...``, i.e. without ``rho``) at the end of every epoch, and
the metrics the value before training, so the penalty's decrease is visible.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import Tensor, nn

from pipeline.errors import ConfigError
from pipeline.finetune.job import FINETUNE_METHODS, FinetuneJob, FinetuneResult
from pipeline.finetune.methods.common import distill_loss_fn, get_module, prepare_models
from pipeline.finetune.regularizers import double_orthogonality
from pipeline.finetune.trainer import dist_info, evaluate, make_optimizer, seed_everything, train_epochs


def factor_matrices(model: nn.Module, structure: dict[str, dict]) -> list[nn.Parameter]:
    """The penalised factor weights: 1x1 (groups 1) conv and linear weights inside the structure's layers."""
    mats: list[nn.Parameter] = []
    for name in structure:
        try:
            layer = get_module(model, name)
        except AttributeError:
            raise ConfigError(f"structure layer {name!r} does not exist in the student model") from None
        for m in layer.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1:
                mats.append(m.weight)
            elif isinstance(m, nn.Linear):
                mats.append(m.weight)
    return mats


def mean_penalty(mats: list[nn.Parameter]) -> Tensor:
    """``(1/Phi) sum_A (||A^T A - I||^2 + ||A A^T - I||^2)`` (0 when there is nothing to penalise)."""
    if not mats:
        return torch.zeros(())
    return torch.stack([double_orthogonality(a) for a in mats]).sum() / len(mats)


@FINETUNE_METHODS.register("elrt")
def elrt(job: FinetuneJob) -> FinetuneResult:
    """Train the factorized student with the double soft orthogonality penalty (see module doc).

    Metrics: ``best_val``, ``penalty_initial``, ``penalty_final``, ``matrices`` (Phi), ``from_scratch``,
    ``seconds``.
    """
    cfg, ecfg = job.cfg, job.cfg.elrt
    seed_everything(job.seed)
    t0 = time.perf_counter()
    student, teacher = prepare_models(job)
    if ecfg.from_scratch:
        for name in job.structure:
            for m in get_module(student, name).modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.reset_parameters()
    mats = factor_matrices(student, job.structure)
    phi = len(mats)

    def penalty() -> tuple[Tensor, dict[str, float]]:
        if phi == 0:
            return torch.zeros((), device=job.device), {}
        p = mean_penalty(mats)
        return ecfg.rho * p, {"ortho": float(p.detach())}

    with torch.no_grad():
        p0 = float(mean_penalty(mats))

    def epoch_end(_m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"ortho_penalty": float(mean_penalty(mats))}

    opt = make_optimizer(student.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay)
    hist = train_epochs(
        student, job.data, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=opt,
        loss_fn=distill_loss_fn(cfg, teacher, extra=penalty), seed=job.seed, device=job.device,
        progress=job.progress, desc="elrt", epoch_end=epoch_end,
    )
    hist["penalty_initial"] = p0
    metrics = {
        "best_val": hist["best_val"] if cfg.epochs > 0 else evaluate(student, job.data.val, device=job.device),
        "penalty_initial": p0,
        "penalty_final": float(mean_penalty(mats).detach()),
        "matrices": phi,
        "rho": ecfg.rho,
        "from_scratch": ecfg.from_scratch,
        "seconds": time.perf_counter() - t0,
        "nproc": dist_info().world,
    }
    return FinetuneResult(model=student.eval(), structure=copy.deepcopy(job.structure), history=hist,
                          metrics=metrics)


__all__ = ["elrt", "factor_matrices", "mean_penalty"]
