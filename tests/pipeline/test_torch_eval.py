"""``eval_mode`` restores each module's own training flag, also when the body raises."""
from __future__ import annotations

import pytest
from torch import nn

from pipeline.torch_eval import eval_mode


def _mixed() -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout())
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model: model.train(True) would unfreeze it
    return model


def test_flags_restored_per_module() -> None:
    model = _mixed()
    before = [m.training for m in model.modules()]
    with eval_mode(model) as m:
        assert m is model
        assert not any(x.training for x in model.modules())
    assert [m.training for m in model.modules()] == before == [True, True, False, True]


def test_flags_restored_when_the_body_raises() -> None:
    model = _mixed()
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == [True, True, False, True]
