"""The stages' side of output heads: the card's heads, torch models' outputs as arrays, their fidelity against the
original, and distillation from the original's raw outputs (no argmax pseudo-labels) for models whose outputs are
not a single classifier.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.card import ModelCard
from pipeline.data import Split, make_loader
from pipeline.finetune.trainer import cosine_factor, make_optimizer
from pipeline.heads.distill import distill_loss_fn
from pipeline.heads.fidelity import multi_fidelity
from pipeline.heads.kinds import HeadSpec

EVAL_BATCH = 64
#: the fidelity metric each kind's one-line summary shows (higher is better for all of them)
SUMMARY_METRIC = {"classify": "agreement", "dense": "iou", "sequence": "step_agreement", "embedding": "cosine"}


def card_heads(card: ModelCard) -> list[HeadSpec]:
    """The card's heads (empty for a single classifier the card predates heads for)."""
    return [HeadSpec.from_dict(h) for h in card.heads]


def uses_heads(card: ModelCard) -> bool:
    """Whether the model is measured and distilled per head (any output that is not one classifier's logits)."""
    return card.output == "heads"


def _as_list(out: Any) -> list[Tensor]:
    return [out] if isinstance(out, Tensor) else list(out)


def torch_outputs(model: nn.Module, x: Tensor, heads: Sequence[HeadSpec], batch: int = EVAL_BATCH) -> list[np.ndarray]:
    """Every output of a torch model for ``x``, run in batches and joined on each output's own batch axis."""
    was = model.training
    model.eval()
    parts: list[list[np.ndarray]] = []
    try:
        with torch.no_grad():
            for i in range(0, int(x.shape[0]), batch):
                parts.append([o.detach().cpu().float().numpy() for o in _as_list(model(x[i:i + batch]))])
    finally:
        model.train(was)
    return [np.concatenate([p[j] for p in parts], axis=h.batch_axis) for j, h in enumerate(heads)]


def fidelity(heads: Sequence[HeadSpec], ref: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Per-output fidelity of ``out`` against the original's ``ref`` (floats only, JSON-ready)."""
    return [{k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in e.items()}
            for e in multi_fidelity(heads, ref, out)]


def summary(entries: Sequence[dict[str, Any]]) -> str:
    """``name: metric value`` per output, for the log."""
    return ", ".join(f"{e['name']} {SUMMARY_METRIC[e['kind']]} {e[SUMMARY_METRIC[e['kind']]]:.4f}" for e in entries)


def _split_loss(student: nn.Module, teacher_out: list[Tensor], split: Split, heads: Sequence[HeadSpec],
                loss: Callable[..., Tensor], device: str) -> float:
    """Mean distillation loss over a split (the teacher's outputs precomputed, batch axis per head)."""
    student.eval()
    total, n = 0.0, int(split.x.shape[0])
    with torch.no_grad():
        for i in range(0, n, EVAL_BATCH):
            s = _as_list(student(split.x[i:i + EVAL_BATCH].to(device)))
            t = [o.narrow(h.batch_axis, i, min(EVAL_BATCH, n - i)).to(device) for o, h in zip(teacher_out, heads)]
            total += float(loss(s, t)) * min(EVAL_BATCH, n - i)
    return total / max(n, 1)


def distill_heads(student: nn.Module, teacher: nn.Module, heads: Sequence[HeadSpec], train: Split, val: Split,
                  cfg: Any, seed: int, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Distil ``student`` from ``teacher``'s raw outputs on unlabelled images, per head (KL per position for logits,
    BCE/MSE for single maps, cosine + MSE for embeddings; ``pipeline.heads.distill``), best-by-val weights.

    ``cfg`` is the finetune config (epochs, batch_size, lr, optimizer, weight_decay, temperature). Labels, where
    present, are not used: fidelity to the original is what the gate checks.
    """
    t0 = time.perf_counter()
    loss = distill_loss_fn(list(heads), float(cfg.temperature))
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    net = copy.deepcopy(student).to(device)
    val_teacher = [torch.from_numpy(o) for o in torch_outputs(teacher, val.x.to(device), heads)]
    best_val = _split_loss(net, val_teacher, val, heads, loss, device)
    best_state = copy.deepcopy(net.state_dict())
    epochs: list[dict[str, Any]] = [{"epoch": 0, "val_loss": best_val}]
    params = [p for p in net.parameters() if p.requires_grad]
    if int(cfg.epochs) > 0 and params:
        opt = make_optimizer(params, cfg.optimizer, float(cfg.lr), float(cfg.weight_decay))
        loader = make_loader(Split(train.x, None), int(cfg.batch_size), shuffle=True, seed=seed)
        total, step = int(cfg.epochs) * len(loader), 0
        for epoch in range(1, int(cfg.epochs) + 1):
            net.train()
            seen, run_loss = 0, 0.0
            for xb, _ in make_loader(Split(train.x, None), int(cfg.batch_size), shuffle=True, seed=seed + epoch):
                for g in opt.param_groups:
                    g["lr"] = float(cfg.lr) * cosine_factor(step, total)
                xb = xb.to(device)
                with torch.no_grad():
                    t = _as_list(teacher(xb))
                value = loss(_as_list(net(xb)), t)
                if not math.isfinite(float(value.detach())):
                    break  # a diverging step: keep the best weights so far
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                step += 1
                seen += int(xb.shape[0])
                run_loss += float(value.detach()) * int(xb.shape[0])
            v = _split_loss(net, val_teacher, val, heads, loss, device)
            epochs.append({"epoch": epoch, "train_loss": run_loss / max(seen, 1), "val_loss": v})
            if v < best_val:
                best_val, best_state = v, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    return net, {"epochs": epochs, "best_val_loss": best_val, "seconds": time.perf_counter() - t0,
                 "loss": "distillation from the original's raw outputs, per head"}
