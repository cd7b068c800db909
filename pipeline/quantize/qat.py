"""Quantization-aware finetuning for low-bit storage weights (``quantize.qat_epochs``).

``quantize.weight_bits = b`` snaps every int8 weight of the QDQ graph onto a b-bit grid per output channel
(:mod:`pipeline.quantize.weights`). Without training, 4-bit grids cost resnet20 and vgg11 several points. This
module trains the (factorized, finetuned) model for a few epochs with each ``nn.Conv2d`` weight fake-quantized to
exactly that grid - symmetric, per output channel, ``L = 2**(b-1) - 1`` levels each side, scale ``max|w| / L`` - with
the straight-through estimator (Bengio et al. 2013; as in QAT toolkits), distilling from the original model.

Why the grids agree with the graph's: BatchNorm folding scales each output channel by one factor, which maps a
per-channel symmetric max-abs grid onto the same kind of grid; ORT's per-channel MinMax scale is ``max|w| / 127``,
and the b-bit snap of :func:`pipeline.quantize.weights.apply_weight_bits_to_qdq` recovers the trained levels.
``nn.Linear`` weights are left to the snap alone (the classifier is small, and ORT lays out Gemm channels on a
different axis).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from pipeline.errors import ConfigError
from pipeline.finetune.methods import distill_loss_fn
from pipeline.finetune.trainer import evaluate, freeze, make_optimizer, seed_everything, train_epochs


class FakeQuant(nn.Module):
    """Weight parametrization: symmetric per-output-channel b-bit quantize-dequantize with a straight-through grad."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 2 <= bits <= 8:
            raise ConfigError(f"quantization-aware training needs 2..8 bits, got {bits}")
        self.levels = 2 ** (bits - 1) - 1

    def forward(self, w: Tensor) -> Tensor:
        dims = tuple(range(1, w.dim()))
        scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / self.levels
        q = torch.round(w / scale).clamp(-self.levels, self.levels) * scale
        # forward: the grid value; backward: identity (straight-through estimator)
        return w + (q - w).detach()


def attach_fake_quant(model: nn.Module, bits: int) -> list[nn.Conv2d]:
    """Parametrize every ``nn.Conv2d`` weight of ``model`` (in place) with :class:`FakeQuant`; returns those convs."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for m in convs:
        parametrize.register_parametrization(m, "weight", FakeQuant(bits))
    return convs


def bake(convs: list[nn.Conv2d]) -> None:
    """Replace each parametrized weight by its quantized value (a plain parameter again)."""
    for m in convs:
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def qat_finetune(model: nn.Module, teacher: nn.Module, data: Any, bits: int, epochs: int, lr: float,
                 finetune_cfg: Any, seed: int, device: str = "cpu", progress: bool = True) -> tuple[nn.Module, dict]:
    """Distil ``model`` from ``teacher`` for ``epochs`` with b-bit fake-quantized conv weights; return it baked.

    Args:
        model: the finetuned (possibly factorized) model; not mutated.
        teacher: the original model (frozen here).
        data: dataset splits with labels (pseudo-labels count).
        bits: weight bits (the ``quantize.weight_bits`` value).
        epochs: QAT epochs (>= 1).
        lr: SGD learning rate (cosine decay).
        finetune_cfg: the finetune config (batch size, optimizer, weight decay, alpha, temperature).
        seed: run seed.
        device: torch device string.
        progress: show a progress bar.

    Returns:
        ``(model with every conv weight on its b-bit grid, in eval mode; training history)``. The history's
        ``val_before`` is the validation accuracy of the fake-quantized model before training.
    """

    if epochs < 1:
        raise ConfigError(f"quantize.qat_epochs must be >= 1 to train (got {epochs})")
    seed_everything(seed)
    net = copy.deepcopy(model).to(device)
    for p in net.parameters():
        p.requires_grad_(True)
    convs = attach_fake_quant(net, bits)
    val_before = evaluate(net, data.val, device=device)
    opt = make_optimizer(net.parameters(), finetune_cfg.optimizer, lr, finetune_cfg.weight_decay)
    t = freeze(copy.deepcopy(teacher).to(device))
    hist = train_epochs(net, data, epochs=epochs, batch_size=finetune_cfg.batch_size, optimizer=opt,
                        loss_fn=distill_loss_fn(finetune_cfg, t), seed=seed, device=device, progress=progress,
                        desc=f"qat {bits}-bit")
    bake(convs)
    hist["val_before"] = val_before
    return net.cpu().eval(), hist
