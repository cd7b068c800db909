"""Quantization-aware finetuning: the fake-quant grid, the straight-through gradient, baked weights on the grid."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import FinetuneConfig, build_config
from pipeline.errors import ConfigError
from pipeline.finetune.trainer import evaluate
from pipeline.quantize.qat import FakeQuant, attach_fake_quant, bake, qat_finetune
from tests.finetune.conftest import TinyNet, make_data, train_quick


def _levels_per_channel(w: torch.Tensor) -> list[int]:
    return [int(torch.unique(c).numel()) for c in w.detach().reshape(w.shape[0], -1)]


def test_fake_quant_puts_each_output_channel_on_a_symmetric_grid() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    q = FakeQuant(3)(w)  # L = 3: levels -3..3
    assert max(_levels_per_channel(q)) <= 7
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 3
    assert torch.allclose(q, torch.round(w / scale).clamp(-3, 3) * scale)
    # each channel's largest weight is a grid end, so the graph's per-channel max-abs scale finds the same grid
    assert torch.allclose(q.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))
    with pytest.raises(ConfigError, match="2..8 bits"):
        FakeQuant(1)


def test_straight_through_gradient_is_the_identity() -> None:
    w = torch.randn(4, 2, 3, 3, requires_grad=True)
    g = torch.randn(4, 2, 3, 3)
    (FakeQuant(4)(w) * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_attach_and_bake_leave_plain_weights_on_the_grid() -> None:
    torch.manual_seed(0)
    net = TinyNet(width=8)
    convs = attach_fake_quant(net, 4)
    assert len(convs) == 3
    x = torch.randn(2, 1, 8, 8)
    before = net(x)
    bake(convs)
    assert all(isinstance(m.weight, nn.Parameter) for m in convs)
    assert torch.allclose(net(x), before)
    for m in convs:
        assert max(_levels_per_channel(m.weight)) <= 15
        assert torch.equal(FakeQuant(4)(m.weight.detach()), m.weight.detach())  # already on its grid


def test_qat_finetune_trains_and_returns_a_model_on_3_bit_grids() -> None:
    data = make_data(n_train=256)
    teacher = train_quick(TinyNet(width=16), data, epochs=4)
    start = [m.weight.detach().clone() for m in teacher.modules() if isinstance(m, nn.Conv2d)]
    cfg = FinetuneConfig(batch_size=32, lr=0.01)
    model, hist = qat_finetune(teacher, teacher, data, bits=3, epochs=2, lr=0.01, finetune_cfg=cfg, seed=0,
                               progress=False)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(max(_levels_per_channel(m.weight)) <= 7 for m in convs)
    assert any(not torch.equal(a, b.weight) for a, b in zip(start, convs))  # trained, not only snapped
    assert 0.0 <= hist["val_before"] <= 1.0 and len(hist["epochs"]) == 2
    # the returned (baked) model is exactly what training selected: its accuracy is the best validation score
    assert evaluate(model, data.val) == pytest.approx(hist["best_val"])
    # the teacher is left alone
    assert all(torch.equal(a, m.weight) for a, m in zip(start, (m for m in teacher.modules() if isinstance(m, nn.Conv2d))))


def test_qat_needs_a_fixed_low_bit_width() -> None:
    with pytest.raises(ConfigError, match="quantize.weight_bits to 2..7"):
        build_config(None, ["quantize.qat_epochs=2"])
    with pytest.raises(ConfigError, match="quantize.weight_bits to 2..7"):
        build_config(None, ["quantize.qat_epochs=2", "quantize.weight_bits=auto"])
    assert build_config(None, ["quantize.qat_epochs=2", "quantize.weight_bits=4"]).quantize.qat_epochs == 2
