"""``eval_mode``: evaluate a caller's model without changing its training flags.

``model.train(was_training)`` after an evaluation is not a restore: it sets every submodule to the top module's
flag, so a model with a frozen (eval) BatchNorm inside a training network comes back changed. This context manager
records each module's own flag and puts exactly that back, also when the body raises.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the ``with`` body, then restore every submodule's previous training flag.

    Args:
        model: any module (not copied; its flags are restored on exit).

    Yields:
        ``model`` itself, in eval mode.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in flags:
            m.training = was_training
