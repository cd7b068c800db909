"""``none``: the student unchanged, only evaluated on the validation split."""
from __future__ import annotations

import copy
import time

from pipeline.finetune.job import FINETUNE_METHODS, FinetuneJob, FinetuneResult
from pipeline.finetune.trainer import evaluate


@FINETUNE_METHODS.register("none")
def no_finetune(job: FinetuneJob) -> FinetuneResult:
    """Return (a copy of) the student unchanged, evaluated on the validation split."""
    t0 = time.perf_counter()
    model = copy.deepcopy(job.student).to(job.device).eval()
    acc = evaluate(model, job.data.val, device=job.device)
    return FinetuneResult(
        model=model,
        structure=copy.deepcopy(job.structure),
        history={"epochs": [], "best_val": acc},
        metrics={"best_val": acc, "seconds": time.perf_counter() - t0},
    )
