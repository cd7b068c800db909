"""The data-parallel worker: ``torchrun --nproc_per_node N -m pipeline.finetune.worker JOB_DIR``.

Each process joins the process group, rebuilds the job written by :func:`pipeline.finetune.ddp.write_job`, runs the
registered method and (rank 0) writes the result for :func:`pipeline.finetune.ddp.read_result`.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.finetune import methods as _methods  # noqa: F401  (registers every method)
from pipeline.finetune.ddp import JOB_JSON, read_job, write_result
from pipeline.finetune.job import FINETUNE_METHODS


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: ``python -m pipeline.finetune.worker JOB_DIR`` under torchrun."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: torchrun --nproc_per_node N -m pipeline.finetune.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    spec = json.loads((job_dir / JOB_JSON).read_text())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = spec["device"]
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        backend = "gloo"
    dist.init_process_group(backend=backend)
    try:
        job = read_job(job_dir, device)
        result = FINETUNE_METHODS.get(job.cfg.method)(job)
        if dist.get_rank() == 0:
            write_result(result, job_dir)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
