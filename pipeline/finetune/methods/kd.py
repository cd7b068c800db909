"""``kd``: finetune the factorized student with cross-entropy + knowledge distillation from the dense teacher."""
from __future__ import annotations

import contextlib
import copy
import time

from pipeline.finetune.distill import FeatureDistiller
from pipeline.finetune.job import FINETUNE_METHODS, FinetuneJob, FinetuneResult
from pipeline.finetune.methods.common import distill_loss_fn, prepare_models
from pipeline.finetune.trainer import dist_info, evaluate, make_optimizer, seed_everything, train_epochs


@FINETUNE_METHODS.register("kd")
def kd(job: FinetuneJob) -> FinetuneResult:
    """``(1 - alpha) CE + alpha T^2 KL(student/T || teacher/T)`` [+ feature MSE at block outputs].

    Optimizer ``cfg.optimizer`` (SGD momentum 0.9 or Adam) at ``cfg.lr`` with cosine decay over ``cfg.epochs``;
    the returned weights are those of the best validation epoch (the starting weights when no epoch beats them,
    since finetuning must never make the deliverable worse than its input).

    Metrics: ``best_val``, ``val_before``, ``seconds``, ``nproc``.
    """
    cfg = job.cfg
    seed_everything(job.seed)
    t0 = time.perf_counter()
    student, teacher = prepare_models(job)
    val_before = evaluate(student, job.data.val, device=job.device)
    start_state = copy.deepcopy(student.state_dict())
    opt = make_optimizer(student.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay)
    feats_ctx = FeatureDistiller(student, teacher) if cfg.feature_weight > 0 else contextlib.nullcontext()
    with feats_ctx as feats:
        hist = train_epochs(
            student, job.data, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=opt,
            loss_fn=distill_loss_fn(cfg, teacher, feats), seed=job.seed, device=job.device,
            progress=job.progress, desc="kd",
        )
    best = hist["best_val"]
    if val_before >= best:
        student.load_state_dict(start_state)
        best = val_before
    hist["best_val"] = best
    metrics = {
        "best_val": best,
        "val_before": val_before,
        "seconds": time.perf_counter() - t0,
        "nproc": dist_info().world,
    }
    return FinetuneResult(model=student.eval(), structure=copy.deepcopy(job.structure), history=hist, metrics=metrics)
