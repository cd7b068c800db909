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


#: words in torch's messages when a feature map shrank to nothing (conv/pool kernels larger than their input)
_SIZE_WORDS = ("output size is too small", "kernel size can't be greater", "calculated padded input size",
               "non-positive", "expected input with non-zero", "non-empty", "zero-size", "size of output",
               "input image is smaller than kernel", "invalid output size")

_FIX = ("set the config key dataset.input_size to a larger [H, W] (images are resized to it) or pick a model with "
        "less downsampling")


def _hw(input_size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(input_size), int(input_size)) if isinstance(input_size, int) else (int(input_size[0]),
                                                                                   int(input_size[1]))


def looks_like_size_error(e: BaseException) -> bool:
    """True when ``e`` is torch's complaint about a feature map that the downsampling made empty."""
    text = str(e).lower()
    return isinstance(e, (RuntimeError, ValueError)) and any(w in text for w in _SIZE_WORDS)


def size_error(name: str, input_size: int | tuple[int, int], detail: str) -> InputError:
    """The error for inputs smaller than ``name``'s downsampling: names the size, ``dataset.input_size`` and the fix."""
    h, w = _hw(input_size)
    return InputError(f"{name} cannot process {h}x{w} inputs ({detail}); the input is smaller than the network's "
                      f"downsampling: {_FIX}")


class EmptyMapProbe:
    """Forward hooks that remember the first module whose output has a zero-size dimension (a vanished feature map)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.empty: tuple[str, tuple[int, ...]] | None = None
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in model.named_modules() if n]

    def _hook(self, name: str):
        def hook(module: torch.nn.Module, args: object, out: object) -> None:
            if self.empty is None and isinstance(out, torch.Tensor) and out.numel() == 0:
                self.empty = (name, tuple(out.shape))
        return hook

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()


def check_min_input(model: torch.nn.Module | int, in_channels: int, input_size: int | tuple[int, int],
                    name: str = "model") -> None:
    """Refuse an input size the network's downsampling cannot handle.

    Args:
        model: the built model (one forward on zeros of ``(1, in_channels, H, W)`` in eval mode, with hooks that
            catch a zero-size feature map anywhere inside), or an int: the model's known minimum input side (e.g. a
            zoo entry's ``min_input_size``).
        in_channels: input channels.
        input_size: the data's ``(H, W)``, or a square side.

    Raises:
        InputError: the input is smaller than the network needs, naming ``dataset.input_size`` and the fix.
    """
    h, w = _hw(input_size)
    if isinstance(model, int):
        if min(h, w) < model:
            raise InputError(f"{name} needs inputs of at least {model}x{model}; the data is {h}x{w}: {_FIX}")
        return
    was_training = model.training
    probe = EmptyMapProbe(model)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, int(in_channels), h, w))
    except (RuntimeError, ValueError) as e:
        if probe.empty is None and not looks_like_size_error(e):
            raise
        detail = (f"layer {probe.empty[0]!r} outputs shape {probe.empty[1]}" if probe.empty
                  else " ".join(str(e).split())[:200])
        raise size_error(name, (h, w), detail) from None
    finally:
        probe.close()
        model.train(was_training)
    if probe.empty is not None:
        raise size_error(name, (h, w), f"layer {probe.empty[0]!r} outputs shape {probe.empty[1]}")
    if isinstance(out, torch.Tensor) and out.numel() == 0:
        raise size_error(name, (h, w), f"the output has shape {tuple(out.shape)}")
