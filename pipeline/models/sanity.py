"""Sanity checks on loaded checkpoint tensors: catch corrupt files before they are blamed on training settings."""
from __future__ import annotations

from typing import Mapping

import torch

from pipeline.errors import InputError

# Float32 weights of a trained CNN stay many orders below this; values near float32's max (3.4e38) mean a corrupt file.
MAX_ABS_WEIGHT = 1e10


def check_checkpoint_sanity(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Refuse a state_dict holding values no trained network has.

    Checks: NaN/Inf anywhere, any floating value with magnitude above ``MAX_ABS_WEIGHT``, and a negative
    BatchNorm ``running_var`` (a variance cannot be negative).

    Raises:
        InputError: naming the first bad tensor, what is wrong with it, and that the checkpoint is corrupt.
    """
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
            continue
        t = t.detach().float()
        fix = "the checkpoint is corrupt; re-export it from the training run or pass another --weights file"
        if not torch.isfinite(t).all():
            raise InputError(f"{source}: tensor {name!r} holds NaN/Inf values; {fix}")
        peak = float(t.abs().max())
        if peak > MAX_ABS_WEIGHT:
            raise InputError(f"{source}: tensor {name!r} holds a value of magnitude {peak:.3g} "
                             f"(limit {MAX_ABS_WEIGHT:g}); {fix}")
        if name.endswith("running_var") and float(t.min()) < 0:
            raise InputError(f"{source}: tensor {name!r} (BatchNorm running variance) has negative entries "
                             f"(min {float(t.min()):.3g}); {fix}")


def check_min_input(model: torch.nn.Module | int, in_channels: int, input_size: int, name: str = "model") -> None:
    """Refuse an input size the network's downsampling cannot handle.

    Args:
        model: the built model (one forward on zeros of ``(1, in_channels, input_size, input_size)`` in eval mode),
            or an int: the model's known minimum input side (e.g. a zoo entry's ``min_input_size``).
        in_channels: input channels.
        input_size: square input side the data has.

    Raises:
        InputError: the input is smaller than the network needs, with the fix (resize the data or pick a model).
    """
    fix = "resize the dataset to a larger input size or pick a model with less downsampling"
    if isinstance(model, int):
        if input_size < model:
            raise InputError(f"{name} needs inputs of at least {model}x{model}; the data is "
                             f"{input_size}x{input_size}: {fix}")
        return
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, int(in_channels), int(input_size), int(input_size)))
    except RuntimeError as e:
        reason = " ".join(str(e).split())[:200]
        raise InputError(f"{name} cannot process {input_size}x{input_size} inputs ({reason}); the input is probably "
                         f"smaller than the network's downsampling: {fix}") from None
    finally:
        model.train(was_training)
    if isinstance(out, torch.Tensor) and out.numel() == 0:
        raise InputError(f"{name} produces an empty output for {input_size}x{input_size} inputs: {fix}")
