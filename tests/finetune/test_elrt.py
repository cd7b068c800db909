"""ELRT (Sui et al. 2024): factor matrices, penalty, and its decrease during a short training."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import ELRTConfig, FinetuneConfig
from pipeline.finetune import FinetuneJob, finetune
from pipeline.finetune.methods.elrt import factor_matrices, mean_penalty

STRUCTURE = {"features.3": {"format": "tucker2", "ranks": [8, 8]}, "features.6": {"format": "tucker2", "ranks": [8, 8]}}


def test_factor_matrices_are_the_tucker2_projections(teacher) -> None:
    from pipeline.factorize.swap import factorize_with_structure

    student = factorize_with_structure(teacher, STRUCTURE)
    mats = factor_matrices(student, STRUCTURE)
    assert len(mats) == 4  # first and last 1x1 conv of each Tucker-2 layer; the kxk core is not penalised
    assert sorted(tuple(m.shape[:2]) for m in mats) == sorted([(8, 32), (32, 8)] * 2)
    # HOSVD factors have orthonormal columns/rows, so each term sits at its floor |p - q| = 24.
    assert mean_penalty(mats).item() == pytest.approx(24.0, rel=1e-3)


def test_elrt_penalty_decreases_and_model_learns(data, teacher) -> None:
    from pipeline.factorize.swap import factorize_with_structure

    student = factorize_with_structure(teacher, STRUCTURE)
    cfg = FinetuneConfig(method="elrt", epochs=4, batch_size=32, lr=0.05, alpha=0.5,
                         elrt=ELRTConfig(rho=1.0, from_scratch=True))
    res = finetune(FinetuneJob(student=student, teacher=teacher, structure=STRUCTURE, data=data, cfg=cfg, seed=0,
                               progress=False))
    pen = [e["ortho_penalty"] for e in res.history["epochs"]]
    p0 = res.metrics["penalty_initial"]
    assert pen[0] < p0 and pen[-1] < pen[0], (p0, pen)
    assert res.metrics["matrices"] == 4 and res.metrics["from_scratch"] is True
    assert res.structure == STRUCTURE
    assert all(isinstance(res.model.get_submodule(n), nn.Sequential) for n in STRUCTURE)
    assert res.metrics["best_val"] > 0.5


def test_elrt_from_scratch_reinitialises_only_factorized_layers(data, teacher) -> None:
    from pipeline.factorize.swap import factorize_with_structure

    student = factorize_with_structure(teacher, STRUCTURE)
    cfg = FinetuneConfig(method="elrt", epochs=0, elrt=ELRTConfig(from_scratch=True))
    res = finetune(FinetuneJob(student=student, teacher=teacher, structure=STRUCTURE, data=data, cfg=cfg, seed=0,
                               progress=False))
    assert torch.equal(res.model.features[0].weight, student.features[0].weight)
    assert not torch.equal(res.model.features[3][0].weight, student.features[3][0].weight)
