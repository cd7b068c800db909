"""Helpers shared by the stage modules: seeding, the example input, cached checkpoint loads, accuracy, MAC counts."""
from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import torch

from benchmarks.energy import onnx_layer_stats
from pipeline.card import ModelCard
from pipeline.checkpoint import load_model
from pipeline.errors import NumericalError
from pipeline.factorize.swap import count_macs_params
from pipeline.finetune.trainer import evaluate
from pipeline.models.ort_graph import OrtGraphModel
from pipeline.stage_api import StageContext

EVAL_BATCH = 256


def seed(value: int) -> None:
    """Seed Python's, numpy's and torch's generators (each stage reseeds, so a resumed run matches a full one)."""
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)


def example_input(card: ModelCard, batch: int = 1) -> torch.Tensor:
    """A zero batch of the model's input shape (for tracing, hooks and MAC counts)."""
    return torch.zeros(batch, *card.input_shape)


def load(ctx: StageContext, stage_name: str) -> tuple[torch.nn.Module, ModelCard]:
    """A copy of the model checkpoint an earlier stage wrote, and its card (loaded once per run)."""
    key = f"model:{stage_name}"
    if key not in ctx.cache:
        ctx.cache[key] = load_model(ctx.inputs[stage_name].dir)
    model, card = ctx.cache[key]
    return copy.deepcopy(model), card


def is_graph(model: torch.nn.Module) -> bool:
    """Whether ``model`` exists only as an ONNX graph (the fallback for ONNX files the importer cannot convert)."""
    return isinstance(model, OrtGraphModel)


def macs_params(model: torch.nn.Module, card: ModelCard, folder: Path) -> tuple[int, int]:
    """MACs per sample and parameters: hooks on the torch layers, or the ONNX graph's own count for a graph-only
    model (``folder`` holds its saved ``model.onnx``; the same counter as the benchmark report)."""
    if is_graph(model):
        stats = onnx_layer_stats(folder / "model.onnx", card.input_shape)
        return int(stats["macs"]), int(stats["params"])
    return count_macs_params(model, example_input(card))


def accuracy(model: torch.nn.Module, split) -> float:
    """Top-1 accuracy of ``model`` on ``split`` (NaN for a split without class labels: unlabelled, or label maps /
    sequences, which the benchmark scores per output head)."""
    if not split.class_labels:
        return float("nan")
    return float(evaluate(model, split, batch_size=EVAL_BATCH))


def check_finite(model: torch.nn.Module, where: str) -> None:
    """Raise NumericalError when any floating tensor of ``model`` holds NaN/Inf."""
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise NumericalError(f"{where}: tensor {name!r} contains NaN/Inf; check the input weights or lower the learning rate")
