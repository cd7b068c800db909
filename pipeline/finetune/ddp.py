"""Data-parallel finetuning: run a method in ``cfg.nproc`` processes under ``torchrun``.

Parent side (:func:`run_ddp`): the job is written to a temporary folder without pickle — model state dicts and
data tensors as safetensors, everything else as JSON — and ``python -m torch.distributed.run --standalone
--nproc_per_node N -m pipeline.finetune.worker JOB_DIR`` is started as a subprocess. ``--standalone`` picks a free
rendezvous port, so concurrent runs on one machine do not collide.

Worker side (:func:`pipeline.finetune.worker.main`, a module of its own so ``-m`` does not run a second copy
of this one, which the package imports): each process initialises the process group (gloo on CPU, nccl on CUDA, one GPU per
local rank), rebuilds teacher and student from the job's model card (``pipeline.card.ModelCard``) plus the structure
(``pipeline.factorize.swap``), loads the state dicts and runs the registered method. The shared training loop
(``trainer.train_epochs``) sees the active process group and wraps the model in ``DistributedDataParallel`` with a
``DistributedSampler`` (``set_epoch`` every epoch; per-process batch ``batch_size // nproc``). Only rank 0 writes
the result (state dict as safetensors + structure/history/metrics as JSON), which the parent loads back into a
copy of its own modules.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pipeline.artifacts import atomic_write_json
from pipeline.card import ModelCard
from pipeline.config import FinetuneConfig, from_dict, to_dict
from pipeline.data import DatasetSplits, Split
from pipeline.errors import ConfigError, PipelineError
from pipeline.finetune.job import FinetuneJob, FinetuneResult
from pipeline.finetune.methods import apply_structure
from pipeline.finetune.methods.svd_training import rebuild
from pipeline.models import build_model

JOB_JSON = "job.json"
RESULT_JSON = "result.json"
RESULT_WEIGHTS = "result.safetensors"


def _flat_state(model: nn.Module) -> dict[str, Tensor]:
    # safetensors refuses aliased storage; detached contiguous CPU clones are always accepted.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _input_size(data: Any) -> Any:
    size = getattr(data, "input_size", None)
    return list(size) if isinstance(size, tuple) else size


def job_card(job: FinetuneJob) -> ModelCard:
    """The model card of the job's (unfactorized) model: what a worker rebuilds teacher and student from."""
    d = job.data
    names = list(d.class_names) if d.class_names is not None else []
    return ModelCard(spec=str(job.model_spec), num_classes=int(d.num_classes), in_channels=int(d.in_channels),
                     input_size=int(d.input_size), mean=tuple(float(m) for m in d.mean),
                     std=tuple(float(s) for s in d.std),
                     class_names=tuple(names) if len(names) == int(d.num_classes) else None)


def write_job(job: FinetuneJob, job_dir: Path) -> None:
    """Serialise ``job`` into ``job_dir`` (safetensors + JSON; no pickle)."""
    d = job.data
    save_file(_flat_state(job.student), str(job_dir / "student.safetensors"))
    save_file(_flat_state(job.teacher), str(job_dir / "teacher.safetensors"))
    tensors: dict[str, Tensor] = {}
    for split_name in ("train", "val", "test"):
        split = getattr(d, split_name, None)
        if split is None:
            continue
        tensors[f"{split_name}.x"] = split.x.detach().cpu().contiguous()
        if split.y is not None:
            tensors[f"{split_name}.y"] = split.y.detach().cpu().contiguous()
    if job.example_input is not None:
        tensors["example_input"] = job.example_input.detach().cpu().contiguous()
    save_file(tensors, str(job_dir / "data.safetensors"))
    atomic_write_json(job_dir / JOB_JSON, {
        "model_spec": job.model_spec,
        "card": job_card(job).to_json(),
        "structure": job.structure,
        "cfg": to_dict(job.cfg),
        "seed": job.seed,
        "device": job.device,
        "progress": job.progress,
        "align": job.align,
        "data": {
            "name": d.name,
            "num_classes": d.num_classes,
            "in_channels": d.in_channels,
            "input_size": _input_size(d),
            "mean": list(d.mean) if d.mean is not None else None,
            "std": list(d.std) if d.std is not None else None,
            "class_names": list(d.class_names) if d.class_names is not None else None,
            "splits": [s for s in ("train", "val", "test") if getattr(d, s, None) is not None],
            # Extra per-split attributes of pipeline.data.Split (e.g. hflip) travel along when present.
            "split_attrs": {
                s: {k: v for k, v in vars(getattr(d, s)).items()
                    if k not in ("x", "y") and isinstance(v, (bool, int, float, str))}
                for s in ("train", "val", "test") if getattr(d, s, None) is not None
            },
        },
    })


def _build(card: ModelCard) -> nn.Module:
    """A fresh, dense instance of the card's model (the worker loads the parent's state dicts into it)."""
    return build_model(card.spec, num_classes=card.num_classes, in_channels=card.in_channels,
                       input_size=card.input_size)


def read_job(job_dir: Path, device: str) -> FinetuneJob:
    """Rebuild the ``FinetuneJob`` written by :func:`write_job` (in a worker process)."""
    spec = json.loads((job_dir / JOB_JSON).read_text())
    meta = spec["data"]
    card = ModelCard.from_json(spec["card"], str(job_dir / JOB_JSON))
    teacher = _build(card)
    teacher.load_state_dict(load_file(str(job_dir / "teacher.safetensors")))
    student = apply_structure(_build(card), spec["structure"])
    student.load_state_dict(load_file(str(job_dir / "student.safetensors")))
    t = load_file(str(job_dir / "data.safetensors"))
    attrs = meta.get("split_attrs", {})
    splits = {s: Split(t[f"{s}.x"], t.get(f"{s}.y"), **attrs.get(s, {})) for s in meta["splits"]}
    size = meta["input_size"]
    data = DatasetSplits(
        name=meta["name"], train=splits["train"], val=splits["val"], test=splits.get("test", splits["val"]),
        num_classes=meta["num_classes"], in_channels=meta["in_channels"],
        input_size=tuple(size) if isinstance(size, list) else size,
        mean=tuple(meta["mean"]) if meta["mean"] is not None else None,
        std=tuple(meta["std"]) if meta["std"] is not None else None,
        class_names=meta["class_names"],
    )
    return FinetuneJob(
        student=student.to(device), teacher=teacher.to(device), structure=spec["structure"], data=data,
        cfg=from_dict(FinetuneConfig, spec["cfg"]), seed=spec["seed"], device=device, progress=spec["progress"],
        example_input=t.get("example_input"), align=spec["align"], model_spec=spec["model_spec"],
    )


def write_result(result: FinetuneResult, job_dir: Path) -> None:
    """Rank 0: the finetuned weights (safetensors) and structure/history/metrics (JSON)."""
    tmp = job_dir / (RESULT_WEIGHTS + ".tmp")
    save_file(_flat_state(result.model), str(tmp))
    os.replace(tmp, job_dir / RESULT_WEIGHTS)
    atomic_write_json(job_dir / RESULT_JSON, {
        "structure": result.structure, "history": result.history, "metrics": result.metrics,
    })


def read_result(job: FinetuneJob, job_dir: Path) -> FinetuneResult:
    """Load the workers' result into a copy of the parent's modules."""
    res = json.loads((job_dir / RESULT_JSON).read_text())
    structure = res["structure"]
    if job.cfg.method == "svd_training":
        # The method rebuilt the teacher in its own SVD form with ranks of its choosing: rebuild the same layout.
        model = rebuild(job.teacher, structure, job.cfg.svd.form)
    elif structure == job.structure:
        # kd/elrt train the student itself; lra returns the teacher truncated as the structure says, which is the
        # student's layout too (the student is the teacher factorized with that structure).
        model = copy.deepcopy(job.student)
    else:
        model = apply_structure(copy.deepcopy(job.teacher), structure)
    model.load_state_dict(load_file(str(job_dir / RESULT_WEIGHTS)))
    return FinetuneResult(model=model.to(job.device).eval(), structure=structure, history=res["history"],
                          metrics=res["metrics"])


def run_ddp(job: FinetuneJob, timeout_s: float | None = None) -> FinetuneResult:
    """Run ``job`` in ``job.cfg.nproc`` processes with ``torchrun`` and return rank 0's result.

    Args:
        job: the finetune job; ``job.model_spec`` is required (workers rebuild the models from it).
        timeout_s: optional wall-clock limit for the worker group.

    Raises:
        ConfigError: no ``model_spec``, or ``nproc`` exceeds the visible GPUs on CUDA.
        PipelineError: the worker group failed (the message carries the tail of its output).
    """
    n = int(job.cfg.nproc)
    if job.model_spec is None:
        raise ConfigError(
            f"finetune.nproc={n} needs the job's model_spec (a pipeline.models name) so worker processes can "
            "rebuild the models; set FinetuneJob.model_spec or use finetune.nproc=1"
        )
    if job.device.startswith("cuda") and n > torch.cuda.device_count():
        raise ConfigError(f"finetune.nproc={n} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    repo_root = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory(prefix="lowrank-ddp-") as tmp:
        job_dir = Path(tmp)
        write_job(job, job_dir)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc_per_node", str(n), "-m", "pipeline.finetune.worker", str(job_dir)]
        env = dict(os.environ)
        env["PYTHONPATH"] = repo_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # One thread per worker: N workers on a shared CPU must not oversubscribe it.
        env.setdefault("OMP_NUM_THREADS", "1")
        log_path = job_dir / "workers.log"
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.run(
                    cmd, env=env, cwd=repo_root, stdout=log,
                    stderr=None if job.progress else subprocess.STDOUT, timeout=timeout_s,
                )
            except subprocess.TimeoutExpired:
                raise PipelineError(f"data-parallel finetuning ({n} processes) exceeded {timeout_s} s") from None
        if proc.returncode != 0 or not (job_dir / RESULT_JSON).is_file():
            tail = log_path.read_text(errors="replace")[-4000:]
            raise PipelineError(
                f"data-parallel finetuning with {n} processes failed (exit code {proc.returncode}); "
                f"worker output tail:\n{tail}" + ("" if not job.progress else "\n(see stderr above for more)")
            )
        return read_result(job, job_dir)
