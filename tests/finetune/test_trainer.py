"""evaluate(), train_baseline() determinism and improvement, distillation losses."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import BaselineConfig
from pipeline.errors import InputError
from pipeline.finetune.distill import FeatureDistiller, kd_loss
from pipeline.finetune.trainer import evaluate, train_baseline
from tests.helpers.toy_models import TinyNet


class _Fixed(torch.nn.Module):
    """Predicts a fixed class per sample index pattern: logits copied from a lookup (to check accuracy math)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits[self.calls : self.calls + x.shape[0]]
        self.calls += x.shape[0]
        return out


def test_evaluate_counts_correct_predictions_across_batches(data) -> None:
    from pipeline.data import Split

    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    pred = torch.tensor([0, 1, 0, 3, 0, 2, 2])  # 5 of 7 right
    logits = F.one_hot(pred, 4).float()
    split = Split(torch.zeros(7, 1, 8, 8), y)
    assert evaluate(_Fixed(logits), split, batch_size=3) == pytest.approx(5 / 7)


def test_evaluate_restores_mode_and_needs_labels(teacher_copy) -> None:
    from pipeline.data import Split

    teacher_copy.train()
    evaluate(teacher_copy, Split(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64)))
    assert teacher_copy.training
    with pytest.raises(InputError, match="labels"):
        evaluate(teacher_copy, Split(torch.zeros(2, 1, 8, 8), None))


def test_train_baseline_is_deterministic_and_learns(data) -> None:
    cfg = BaselineConfig(epochs=4, batch_size=32, lr=0.05, augment=False)
    torch.manual_seed(1)
    init = TinyNet(width=16)
    before = copy.deepcopy(init.state_dict())
    m1, h1 = train_baseline(init, data, cfg, seed=3, progress=False)
    m2, h2 = train_baseline(init, data, cfg, seed=3, progress=False)
    # The input model is not mutated.
    assert all(torch.equal(before[k], v) for k, v in init.state_dict().items())
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert [e["loss"] for e in h1["epochs"]] == [e["loss"] for e in h2["epochs"]]
    assert set(h1) >= {"epochs", "best_val", "seconds"} and len(h1["epochs"]) == 4
    assert h1["best_val"] == max(e["val_acc"] for e in h1["epochs"])
    assert evaluate(m1, data.val) == pytest.approx(h1["best_val"])  # best-by-val weights are the ones returned
    assert h1["best_val"] > 0.5  # 4 classes: chance is 0.25


def test_train_baseline_with_augmentation_runs(data) -> None:
    cfg = BaselineConfig(epochs=1, batch_size=64, lr=0.05, augment=True)
    torch.manual_seed(2)
    model, hist = train_baseline(TinyNet(width=8), data, cfg, seed=0, progress=False)
    assert len(hist["epochs"]) == 1 and 0.0 <= hist["best_val"] <= 1.0
    assert not model.training


def test_kd_loss_zero_for_identical_logits_and_t_squared_scaling() -> None:
    z = torch.randn(5, 4)
    assert kd_loss(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    manual = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4
    assert kd_loss(s, t, 2.0).item() == pytest.approx(manual.item(), rel=1e-5)


def test_feature_distiller_matches_same_shape_children_and_removes_hooks(teacher_copy) -> None:
    student = TinyNet()
    with FeatureDistiller(student, teacher_copy) as fd:
        assert fd.names == ["features", "pool"]  # the last child (logits) is left to the KD term
        x = torch.randn(3, 1, 8, 8)
        student(x), teacher_copy(x)
        loss = fd.loss()
        expected = (F.mse_loss(student.features(x), teacher_copy.features(x))
                    + F.mse_loss(student.pool(student.features(x)), teacher_copy.pool(teacher_copy.features(x)))) / 2
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not student.features._forward_hooks and not teacher_copy.features._forward_hooks


def test_warmup_cosine_ramps_linearly_then_decays_to_zero() -> None:
    from pipeline.finetune.trainer import cosine_factor, warmup_cosine

    f = warmup_cosine(4)
    total = 14
    assert [f(s, total) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # after warm-up: the cosine over the remaining 10 steps, starting at 1
    assert f(4, total) == 1.0
    assert abs(f(9, total) - 0.5) < 1e-12
    assert f(14, total) == 0.0
    assert warmup_cosine(0) is cosine_factor


def test_deep_cifar_resnets_start_their_residual_branches_as_identity() -> None:
    import torch

    from pipeline.models import build_model
    from pipeline.models.zoo import BasicBlock

    torch.manual_seed(0)
    deep = build_model("resnet56", 10, 3, 32)
    blocks = [b for b in deep.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 27
    assert all(float(b.bn2.weight.abs().sum()) == 0.0 for b in blocks)
    assert all(float(b.bn1.weight.min()) == 1.0 for b in blocks)
    # an identity-shortcut block at init returns relu(x) (eval-mode BN: zero gamma, zero beta)
    b = next(b for b in blocks if isinstance(b.shortcut, torch.nn.Identity)).eval()
    x = torch.randn(2, b.conv1.in_channels, 8, 8)
    assert torch.equal(b(x), torch.relu(x))
    # resnet20 trains better from the plain init in the default budget: its branches start at unit gamma
    shallow = build_model("resnet20", 10, 3, 32)
    assert all(float(b.bn2.weight.min()) == 1.0 for b in shallow.modules() if isinstance(b, BasicBlock))
