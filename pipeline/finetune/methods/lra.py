"""``lra``: Lee, Kwon, Kim, Wei 2019, "Learning Low-Rank Approximation for CNNs".

The dense *teacher* copy is trained with CE (+KD from the frozen teacher, ``alpha``); every ``lra.period`` optimizer
steps (S_D) each target weight (the layers of the structure) is overwritten by its low-rank reconstruction at the
structure's ranks. SGD then settles in a minimum that is flat with respect to that low-rank error, so the final
truncation costs little. After training the model is factorized for real with ``factorize_with_structure`` and
returned without further training; the metrics report accuracy just before and just after that truncation.

The projection is the structure format's own ``project`` (:mod:`pipeline.factorize.formats`): it must be the same
low-rank family the final truncation uses, or the flat minimum would be flat in the wrong directions; hence the
structure's format decides, and ``lra.form`` only records the paper's two variants (it is checked against the
structure and reported):

* ``tucker2`` (ranks ``[r1, r2]``, input side then output side as in the 1x1 c->r1, kxk r1->r2, 1x1 r2->n chain):
  HOSVD projection ``W x0 (U_out U_out^T) x1 (U_in U_in^T)``, subspaces from the eigendecomposition of the Gram
  matrix of each unfolding (the same subspaces as the SVD, much faster).
* ``channel_svd`` / ``linear_svd`` (rank ``[r]``): truncated SVD of the lowered ``n x (c k k)`` (im2col) matrix.
* ``spatial_svd`` (rank ``[r]``): truncated SVD of the ``(c k) x (n k)`` matricisation.

Formats whose ``project`` is only an approximation (CP: the best rank-R CP tensor may not exist) are refused.

The best epoch is chosen by the validation accuracy of the *projected* model (what truncation will produce), not
of the dense one between projections.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.errors import ConfigError
from pipeline.factorize.formats import FORMATS
from pipeline.factorize.swap import factorize_with_structure
from pipeline.finetune.job import FINETUNE_METHODS, FinetuneJob, FinetuneResult
from pipeline.finetune.methods.common import distill_loss_fn, get_module
from pipeline.finetune.trainer import dist_info, evaluate, freeze, make_optimizer, seed_everything, train_epochs

#: formats with an exact projection (``Format.exact_projection``), in registration order
PROJECTABLE = tuple(n for n in FORMATS.names() if FORMATS.get(n).exact_projection)


def project_weight(weight: Tensor, fmt: str, ranks: list[int]) -> Tensor:
    """Low-rank projection of a dense conv/linear weight onto the family of factorize format ``fmt``.

    Args:
        weight: conv ``(n, c, kh, kw)`` or linear ``(out, in)`` weight.
        fmt: a format with an exact projection (:data:`PROJECTABLE`).
        ranks: ``[r1, r2]`` for tucker2 (input-side, output-side), ``[r]`` otherwise.

    Returns:
        A tensor of the same shape and dtype with the requested (multi)linear rank (computed in float64).
    """
    if fmt not in PROJECTABLE:
        raise ConfigError(f"lra cannot project format {fmt!r}; supported formats: {', '.join(PROJECTABLE)}")
    w = weight.detach()
    fmt_obj = FORMATS.get(fmt)
    want_dim = 2 if fmt == "linear_svd" else 4
    n_ranks = 2 if fmt == "tucker2" else 1
    if (w.dim() != want_dim and fmt != "channel_svd") or len(ranks) != n_ranks:
        raise ConfigError(f"{fmt} projection needs a {'linear' if want_dim == 2 else 'conv'} weight and "
                          f"{n_ranks} rank(s), got shape {tuple(w.shape)} and ranks {list(ranks)}")
    return fmt_obj.project(w, tuple(int(r) for r in ranks)).to(w.dtype)


class Projector:
    """Applies :func:`project_weight` to every layer of the structure in a dense model (in place).

    Targets are held by name so the same projector serves the training model and throwaway copies of it.
    """

    def __init__(self, model: nn.Module, structure: dict[str, dict]) -> None:
        self.targets: list[tuple[str, str, list[int]]] = []
        for name, entry in structure.items():
            fmt = entry.get("format")
            if fmt not in PROJECTABLE:
                raise ConfigError(
                    f"finetune.method=lra cannot project layer {name!r} of format {fmt!r}; "
                    f"factorize with one of {', '.join(PROJECTABLE)} or use finetune.method=kd"
                )
            try:
                layer = get_module(model, name)
            except AttributeError:
                raise ConfigError(f"structure layer {name!r} does not exist in the teacher model") from None
            if not isinstance(layer, (nn.Conv2d, nn.Linear)):
                raise ConfigError(f"structure layer {name!r} is a {type(layer).__name__}, not a dense Conv2d/Linear")
            self.targets.append((name, fmt, [int(r) for r in entry.get("ranks", [])]))

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        """Overwrite each target weight of ``model`` by its low-rank reconstruction."""
        for name, fmt, ranks in self.targets:
            layer = get_module(model, name)
            layer.weight.copy_(project_weight(layer.weight, fmt, ranks))


@FINETUNE_METHODS.register("lra")
def lra(job: FinetuneJob) -> FinetuneResult:
    """Dense training with a low-rank projection every ``lra.period`` steps, then real truncation (module doc).

    Metrics: ``best_val`` (the returned truncated model), ``acc_before_truncation``, ``acc_after_truncation``,
    ``truncation_drop``, ``projections``, ``period``, ``seconds``.
    """
    cfg = job.cfg
    seed_everything(job.seed)
    t0 = time.perf_counter()
    teacher = freeze(copy.deepcopy(job.teacher).to(job.device))
    model = copy.deepcopy(job.teacher).to(job.device)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    proj = Projector(model, job.structure)
    projections = 0
    forms = sorted({e["format"] for e in job.structure.values()})
    wanted = "tucker2" if cfg.lra.form == "tucker2" else "svd"
    mismatch = [f for f in forms if (f == "tucker2") != (wanted == "tucker2")]
    period = cfg.lra.period

    def after_step(step: int) -> None:
        nonlocal projections
        if step % period == 0:
            proj(model)
            projections += 1

    def epoch_end(m: nn.Module) -> dict[str, Any]:
        probe = copy.deepcopy(m)
        proj(probe)
        return {"val_acc_projected": evaluate(probe, job.data.val, device=job.device)}

    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay)
    hist = train_epochs(
        model, job.data, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=opt,
        loss_fn=distill_loss_fn(cfg, teacher), seed=job.seed, device=job.device, progress=job.progress,
        desc="lra", after_step=after_step, epoch_end=epoch_end, score_key="val_acc_projected",
    )
    acc_before = evaluate(model, job.data.val, device=job.device)
    # The real decomposition (not a shape-only rebuild): the truncation is what is being measured.
    truncated = factorize_with_structure(copy.deepcopy(model).cpu(), job.structure).to(job.device)
    acc_after = evaluate(truncated, job.data.val, device=job.device)
    hist["best_val"] = acc_after
    metrics = {
        "best_val": acc_after,
        "acc_before_truncation": acc_before,
        "acc_after_truncation": acc_after,
        "truncation_drop": acc_before - acc_after,
        "projections": projections,
        "period": period,
        "projection_formats": forms,
        "form_mismatch": mismatch,  # structure formats outside cfg.lra.form's family (projected as the structure says)
        "seconds": time.perf_counter() - t0,
        "nproc": dist_info().world,
    }
    return FinetuneResult(model=truncated.eval(), structure=copy.deepcopy(job.structure), history=hist,
                          metrics=metrics)


__all__ = ["Projector", "lra", "project_weight"]
