"""LRA (Lee et al. 2019): projections reach the requested ranks; training + real truncation end to end."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.config import FinetuneConfig, LRAConfig
from pipeline.errors import ConfigError
from pipeline.finetune import FinetuneJob, finetune
from pipeline.finetune.methods.lra import project_weight
from pipeline.finetune.trainer import evaluate


def _rank(m: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(m.to(torch.float64), rtol=1e-6))


def test_channel_svd_projection_reaches_rank_and_is_optimal() -> None:
    w = torch.randn(12, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    p = project_weight(w, "channel_svd", [4])
    assert p.shape == w.shape and _rank(p.reshape(12, -1)) == 4
    # Eckart-Young: the error equals the energy of the dropped singular values.
    s = torch.linalg.svdvals(w.reshape(12, -1))
    assert torch.linalg.norm(w - p).item() == pytest.approx(s[4:].pow(2).sum().sqrt().item(), rel=1e-4)
    # Projection is idempotent.
    assert torch.allclose(project_weight(p, "channel_svd", [4]), p, atol=1e-5)


def test_spatial_svd_projection_reaches_rank_of_the_ck_by_nk_matrix() -> None:
    w = torch.randn(8, 5, 3, 3, generator=torch.Generator().manual_seed(1))
    p = project_weight(w, "spatial_svd", [3])
    assert _rank(p.permute(1, 2, 0, 3).reshape(15, 24)) == 3
    assert _rank(p.reshape(8, -1)) > 3  # a different matricisation: not the channel rank


def test_tucker2_projection_reaches_both_mode_ranks() -> None:
    w = torch.randn(16, 10, 3, 3, generator=torch.Generator().manual_seed(2))
    p = project_weight(w, "tucker2", [4, 6])  # [r1 (input side), r2 (output side)]
    assert _rank(p.reshape(16, -1)) == 6                      # mode-0 (output channels)
    assert _rank(p.transpose(0, 1).reshape(10, -1)) == 4      # mode-1 (input channels)
    assert torch.allclose(project_weight(p, "tucker2", [4, 6]), p, atol=1e-5)
    # Full ranks leave the weight unchanged.
    assert torch.allclose(project_weight(w, "tucker2", [10, 16]), w, atol=1e-5)


def test_linear_projection_and_unsupported_format() -> None:
    w = torch.randn(7, 9, generator=torch.Generator().manual_seed(3))
    assert _rank(project_weight(w, "linear_svd", [2])) == 2
    with pytest.raises(ConfigError, match="cp"):
        project_weight(torch.randn(4, 4, 3, 3), "cp", [2])


@pytest.mark.parametrize("fmt,ranks", [("tucker2", [8, 8]), ("channel_svd", [8])])
def test_lra_trains_projects_and_truncates(data, teacher, fmt: str, ranks: list[int]) -> None:
    from pipeline.factorize.swap import factorize_with_structure

    structure = {"features.3": {"format": fmt, "ranks": ranks}, "features.6": {"format": fmt, "ranks": ranks}}
    student = factorize_with_structure(teacher, structure)
    cfg = FinetuneConfig(method="lra", epochs=2, batch_size=32, lr=0.02, lra=LRAConfig(period=3, form="tucker2"))
    res = finetune(FinetuneJob(student=student, teacher=teacher, structure=structure, data=data, cfg=cfg, seed=0,
                               progress=False))
    m = res.metrics
    assert m["projections"] == (2 * 8) // 3  # 8 steps per epoch (256 / 32), one projection every 3 steps
    assert m["truncation_drop"] == pytest.approx(m["acc_before_truncation"] - m["acc_after_truncation"])
    assert all("val_acc_projected" in e for e in res.history["epochs"])
    # The returned model is the truncated (factorized) one, as the structure says, evaluated as reported.
    for name in structure:
        assert isinstance(res.model.get_submodule(name), nn.Sequential)
    assert evaluate(res.model, data.val) == pytest.approx(m["acc_after_truncation"])
    assert m["best_val"] == m["acc_after_truncation"] > 0.7
    # Trained to be flat with respect to the low-rank error: truncation costs little.
    assert m["truncation_drop"] < 0.15


def test_lra_projection_of_a_trained_model_matches_real_truncation(teacher) -> None:
    from pipeline.factorize.swap import factorize_with_structure

    from pipeline.finetune.methods.lra import Projector

    structure = {"features.3": {"format": "channel_svd", "ranks": [5]}}
    dense = copy.deepcopy(teacher)
    Projector(dense, structure)(dense)
    trunc = factorize_with_structure(teacher, structure)
    x = torch.randn(4, 1, 8, 8)
    # Projecting then running dense == the rank-5 factorized layer on the original weights.
    assert torch.allclose(dense.features[:4](x), trunc.features[:4](x), atol=1e-4)
