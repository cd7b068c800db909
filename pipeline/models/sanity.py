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
