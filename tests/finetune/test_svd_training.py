"""SVD training (Yang et al. 2020): full-rank equivalence, deployable chains, the whole schedule."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import FinetuneConfig, SVDTrainingConfig
from pipeline.finetune import FinetuneJob, finetune
from pipeline.finetune.methods.svd_training import SVDConv
from pipeline.finetune.trainer import evaluate


@pytest.mark.parametrize("form", ["channel", "spatial"])
@pytest.mark.parametrize("stride,padding,bias", [(1, 1, True), (2, 1, False), (1, 0, True)])
def test_svdconv_full_rank_equals_dense_conv(form: str, stride: int, padding: int, bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, stride=stride, padding=padding, bias=bias)
    x = torch.randn(2, 5, 9, 9)
    layer = SVDConv(conv, form)
    assert layer.rank == (min(7, 45) if form == "channel" else min(15, 21))
    ref = conv(x)
    assert torch.allclose(layer(x), ref, atol=1e-5)
    # The deployable chain (sqrt|s| folded into both factors) is the same function.
    seq = layer.to_sequential()
    assert [type(m) for m in seq] == [nn.Conv2d, nn.Conv2d]
    if form == "channel":
        assert seq[0].kernel_size == (3, 3) and seq[1].kernel_size == (1, 1)
    else:
        assert seq[0].kernel_size == (3, 1) and seq[1].kernel_size == (1, 3)
    assert seq[0].bias is None
    assert torch.allclose(seq(x), ref, atol=1e-5)
    assert torch.allclose(layer.to_dense()(x), ref, atol=1e-5)


def test_svdconv_linear_and_pruning() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    layer = SVDConv(lin, "channel")
    x = torch.randn(4, 6)
    assert torch.allclose(layer(x), lin(x), atol=1e-5)
    # Prune to the 2 largest singular values: the function is the rank-2 truncation of W.
    keep = torch.zeros(layer.rank, dtype=torch.bool)
    keep[:2] = True  # singular values come sorted descending from the SVD
    layer.prune(keep)
    u, s, vh = torch.linalg.svd(lin.weight.detach())
    w2 = (u[:, :2] * s[:2]) @ vh[:2]
    assert torch.allclose(layer(x), x @ w2.t() + lin.bias, atol=1e-5)
    assert torch.allclose(layer.to_sequential()(x), x @ w2.t() + lin.bias, atol=1e-5)
    assert torch.linalg.matrix_rank(layer.dense_weight().detach()) == 2


def test_orthogonality_of_fresh_decomposition_is_zero() -> None:
    layer = SVDConv(nn.Conv2d(4, 6, 3), "channel")
    assert layer.orthogonality().item() == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("form", ["channel", "spatial"])
def test_svd_training_schedule_prunes_aligns_and_deploys(data, teacher, form: str) -> None:
    cfg = FinetuneConfig(
        method="svd_training", batch_size=32, alpha=0.5,
        svd=SVDTrainingConfig(form=form, lambda_s=0.5, sparsity="hoyer", prune_energy=0.2, phase_epochs=(1, 1, 1)),
    )
    job = FinetuneJob(student=teacher, teacher=teacher, structure={}, data=data, cfg=cfg, seed=0,
                      progress=False, align=4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    res = finetune(job)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # input untouched
    m = res.metrics
    assert [e["phase"] for e in res.history["epochs"]] == ["orthogonality", "sparsity", "finetune"]
    assert "ortho" in res.history["epochs"][0] and "sparsity" in res.history["epochs"][1]
    # Every eligible conv was a target; a pruned rank is aligned up to a multiple of 4 (or full rank).
    assert set(m["full_ranks"]) == {"features.0", "features.3", "features.6"}
    for name, r in m["final_ranks"].items():
        assert r >= m["pruned_ranks"][name] and (r % 4 == 0 or r == m["full_ranks"][name])
        assert res.structure[name] == {"format": f"{form}_svd", "ranks": [r]}
        seq = res.model.get_submodule(name)
        assert isinstance(seq, nn.Sequential) and seq[0].out_channels == r
    # The stem conv (1 input channel) can never save MACs: it reverts to a dense conv and leaves the structure.
    assert "features.0" in m["reverted_dense"] and "features.0" not in res.structure
    assert isinstance(res.model.get_submodule("features.0"), nn.Conv2d)
    assert set(res.structure) | set(m["reverted_dense"]) == set(m["full_ranks"])
    assert res.structure, "sparsification should shrink at least one 32-channel conv enough to save MACs"
    assert evaluate(res.model, data.val) == pytest.approx(m["best_val"])
    assert m["best_val"] > 0.7


def test_mac_capped_rank_keeps_the_layer_within_its_mac_fraction() -> None:
    from pipeline.finetune.methods.svd_training import mac_capped_rank

    layer = SVDConv(nn.Conv2d(32, 64, 3), "channel")  # full rank 64; per rank: 32*9 + 64 = 352 MACs; dense 18432
    assert layer.rank == 64
    r = mac_capped_rank(layer, 0.25)
    assert r == int(0.25 * 18432 // 352) == 13
    fact, dense = layer.macs_per_pixel(r)
    assert fact <= 0.25 * dense < layer.macs_per_pixel(r + 1)[0]
    assert mac_capped_rank(layer, 1.0) == 18432 // 352 == 52  # the break-even rank, below full rank 64
    linear = SVDConv(nn.Linear(4, 3), "channel")  # full rank 3, per rank 7 MACs, dense 12
    assert mac_capped_rank(linear, 1.0) == 1
    assert mac_capped_rank(layer, 1e-6) == 1  # never below one
