"""kd: distillation improves a student on the tiny task; feature distillation; method "none"; dispatch errors."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import FinetuneConfig
from pipeline.errors import ConfigError
from pipeline.finetune import FINETUNE_METHODS, FinetuneJob, finetune
from pipeline.finetune.trainer import evaluate
from tests.helpers.toy_models import TinyNet


def test_methods_registered() -> None:
    assert set(FINETUNE_METHODS.names()) == {"none", "kd", "svd_training", "lra", "elrt"}


@pytest.mark.parametrize("feature_weight", [0.0, 1.0])
def test_kd_improves_a_student(data, teacher, feature_weight: float) -> None:
    torch.manual_seed(5)
    student = TinyNet()
    before = evaluate(student, data.val)
    cfg = FinetuneConfig(method="kd", epochs=3, batch_size=32, lr=0.05, feature_weight=feature_weight)
    res = finetune(FinetuneJob(student=student, teacher=teacher, structure={}, data=data, cfg=cfg, seed=0,
                               progress=False))
    assert res.metrics["val_before"] == pytest.approx(before)
    assert res.metrics["best_val"] > max(0.6, before + 0.3)
    assert evaluate(res.model, data.val) == pytest.approx(res.metrics["best_val"])
    assert not res.model.training
    if feature_weight > 0:
        assert all("feat" in e for e in res.history["epochs"])
        assert not res.model.features._forward_hooks  # hooks removed


def test_kd_on_a_factorized_student_recovers_accuracy(data, teacher) -> None:
    from pipeline.factorize.swap import factorize_with_structure

    structure = {name: {"format": "channel_svd", "ranks": [2]} for name in ("features.3", "features.6")}
    student = factorize_with_structure(teacher, structure)
    cfg = FinetuneConfig(method="kd", epochs=2, batch_size=32, lr=0.02)
    res = finetune(FinetuneJob(student=student, teacher=teacher, structure=structure, data=data, cfg=cfg, seed=0,
                               progress=False, example_input=torch.zeros(1, 1, 8, 8)))
    assert res.metrics["best_val"] >= res.metrics["val_before"]
    assert res.structure == structure
    assert res.metrics["macs"] > 0 and res.metrics["params"] > 0


def test_none_returns_student_unchanged(data, teacher) -> None:
    cfg = FinetuneConfig(method="none")
    res = finetune(FinetuneJob(student=teacher, teacher=teacher, structure={}, data=data, cfg=cfg, seed=0,
                               progress=False))
    assert res.model is not teacher
    for a, b in zip(res.model.state_dict().values(), teacher.state_dict().values()):
        assert torch.equal(a, b)
    assert res.metrics["best_val"] == pytest.approx(evaluate(teacher, data.val))


def test_unknown_method_and_ddp_without_model_spec(data, teacher) -> None:
    with pytest.raises(ConfigError, match="known finetune methods"):
        finetune(FinetuneJob(student=teacher, teacher=teacher, structure={}, data=data,
                             cfg=FinetuneConfig(method="nope"), seed=0))
    with pytest.raises(ConfigError, match="model_spec"):
        finetune(FinetuneJob(student=teacher, teacher=teacher, structure={}, data=data,
                             cfg=FinetuneConfig(method="kd", nproc=2), seed=0))
