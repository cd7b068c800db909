"""Layer-wise reconstruction finetune: each factorized layer is trained for a few Adam steps to reproduce the dense
layer's outputs on calibration inputs (MSE), one layer at a time, before any end-to-end training.

Cheap (seconds per layer: only the layer's own small module runs forward and backward) and label-free, so it also
serves models without training data beyond a calibration set. With ``propagate=True`` a layer's inputs come from the
partly tuned factorized model while its targets stay the dense model's outputs, so each layer also absorbs the error
its factorized predecessors left.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError


class _Stop(Exception):
    """Ends a forward pass once the hooked layer ran."""


def _layer_io(model: nn.Module, name: str, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and outputs of ``model``'s layer ``name`` on ``images`` (eval mode, each pass stopped at the layer)."""
    layer = model.get_submodule(name)
    xs, ys = [], []

    def hook(mod: nn.Module, inp: tuple[Any, ...], out: torch.Tensor) -> None:
        xs.append(inp[0].detach())
        ys.append(out.detach())
        raise _Stop

    h = layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                try:
                    model(images[i:i + batch_size])
                except _Stop:
                    pass
    finally:
        h.remove()
        model.train(was_training)
    return torch.cat(xs), torch.cat(ys)


def layerwise_reconstruct(
    dense: nn.Module,
    factorized: nn.Module,
    names: Iterable[str],
    images: torch.Tensor,
    *,
    steps: int = 50,
    lr: float = 1e-3,
    batch_size: int = 16,
    max_images: int = 64,
    propagate: bool = False,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Train each factorized layer of ``factorized`` (in place) to match the dense layer of ``dense``.

    Args:
        dense: the model before factorization (not modified).
        factorized: the factorized model; its modules at ``names`` (the factorize stage's ``structure`` keys) are
            trained, nothing else.
        names: qualified names of the factorized layers, in forward order.
        images: calibration inputs (N, C, H, W); the first ``max_images`` are used.
        steps: Adam steps per layer (minibatches of ``batch_size`` cached inputs).
        propagate: take each layer's inputs from the factorized model instead of the dense one.

    Returns:
        ``{name: {"mse_before", "mse_after", "seconds"}}`` (MSE relative to the mean square of the dense outputs).

    Raises:
        ConfigError: ``steps`` or ``lr`` out of range, or no images.
    """
    if steps < 0 or lr <= 0 or len(images) == 0:
        raise ConfigError(f"layer-wise finetune needs steps >= 0, lr > 0 and calibration images (got steps={steps}, "
                          f"lr={lr}, {len(images)} images)")
    imgs = images[:max_images]
    gen = torch.Generator().manual_seed(seed)
    report: dict[str, dict[str, float]] = {}
    for name in names:
        t0 = time.perf_counter()
        x, target = _layer_io(dense, name, imgs, batch_size)
        if propagate:
            x, _ = _layer_io(factorized, name, imgs, batch_size)
        module = factorized.get_submodule(name)
        scale = float(target.pow(2).mean().clamp_min(1e-30))
        params = [p for p in module.parameters() if p.requires_grad]
        was_training = module.training
        module.train()
        with torch.no_grad():
            before = float(F.mse_loss(module(x), target)) / scale
        start = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if params and steps:
            opt = torch.optim.Adam(params, lr=lr)
            for _ in range(steps):
                idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
                opt.zero_grad(set_to_none=True)
                loss = F.mse_loss(module(x[idx]), target[idx]) / scale
                loss.backward()
                opt.step()
        module.train(was_training)
        with torch.no_grad():
            after = float(F.mse_loss(module(x), target)) / scale
            if after > before:  # Adam noise made it worse (a data-aware start is already near optimal): undo
                module.load_state_dict(start)
                after = before
        report[name] = {"mse_before": before, "mse_after": after, "seconds": time.perf_counter() - t0}
    return report
