"""What the factorize stage hands the rank search (pipeline/factorize/search.py): a whole-model timer on the
benchmark target and a short distillation probe. They live here because the factorize package knows neither ONNX
export nor finetuning."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from benchmarks.latency import measure_latency
from benchmarks.targets import get_target
from exporters.onnx import export_onnx
from pipeline.config import PipelineConfig
from pipeline.data import Split
from pipeline.finetune import FinetuneJob, finetune
from pipeline.finetune.trainer import evaluate
from pipeline.stages._common import EVAL_BATCH

#: timed runs per model in the search's latency loop (medians of CPU time; enough to order levels that differ by
#: more than the search's min_gain)
SEARCH_SAMPLES = 30


def model_timer(cfg: PipelineConfig, shape: tuple[int, int, int]) -> Callable[[dict[str, nn.Module]], dict[str, float]]:
    """``{name: model} -> {name: CPU-time p50 ms}``: each model exported like the export stage does (opset, BN
    folded, simplified) and all timed interleaved in one loop on ``benchmark.target`` at batch 1."""
    def time_models(models: dict[str, nn.Module]) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="lrd-search-") as td:
            files = {}
            for name, m in models.items():
                files[name] = Path(td) / f"{name}.onnx"
                export_onnx(m, shape, files[name], opset=cfg.export.opset, simplify=cfg.export.simplify)
            lat = measure_latency(files, get_target(cfg.benchmark.target), shape, batch=1, samples=SEARCH_SAMPLES,
                                  warmup=5, threads=cfg.benchmark.threads, seed=cfg.seed)
        # CPU time at one thread is the call's compute, free of preemption on a shared machine
        return {n: float(lat[n].get("cpu_p50") or lat[n]["p50"]) for n in files}
    return time_models


def distill_probe(cfg: PipelineConfig, teacher: nn.Module, data) -> Callable[[nn.Module], float]:
    """A factorized model -> its validation accuracy after one distillation pass over ``factorize.search.probe_images``
    seeded training images (the finetune stage's KD settings otherwise)."""
    n = min(len(data.train.x), int(cfg.factorize.search.probe_images))
    idx = torch.randperm(len(data.train.x), generator=torch.Generator().manual_seed(int(cfg.seed) + 2))[:n]
    train = Split(data.train.x[idx], None if data.train.y is None else data.train.y[idx])
    probe_data = dataclasses.replace(data, train=train)
    fcfg = dataclasses.replace(cfg.finetune, method="kd", epochs=1, nproc=1)

    def probe(student: nn.Module) -> float:
        job = FinetuneJob(student=student, teacher=teacher, structure={}, data=probe_data, cfg=fcfg,
                          seed=cfg.seed, device=cfg.device, progress=False)
        return float(evaluate(finetune(job).model, data.val, batch_size=EVAL_BATCH))
    return probe
