"""Distillation losses from the original's raw outputs, against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.heads import HeadSpec, distill_loss, distill_loss_fn
from pipeline.heads.distill import embedding_loss, head_loss, kl_per_position, single_map_loss

KL_HALF_VS_QUARTER = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL([.5,.5] || [.25,.75]) = .5 ln(4/3)


def test_kl_of_logits_probabilities_and_logprobs_agree() -> None:
    teacher = torch.tensor([[0.0, 0.0]])
    student = torch.tensor([[0.0, math.log(3.0)]])             # softmax -> [1/4, 3/4]
    assert kl_per_position(student, teacher, 1).item() == pytest.approx(KL_HALF_VS_QUARTER, rel=1e-6)
    p_s, p_t = torch.softmax(student, 1), torch.softmax(teacher, 1)
    assert kl_per_position(p_s, p_t, 1, values="prob").item() == pytest.approx(KL_HALF_VS_QUARTER, rel=1e-5)
    assert kl_per_position(p_s.log(), p_t.log(), 1, values="logprob").item() == pytest.approx(KL_HALF_VS_QUARTER, rel=1e-6)
    assert kl_per_position(student, student.clone(), 1, temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_sequence_kl_is_averaged_per_time_step_in_either_layout() -> None:
    # N=1, T=2: step 0 differs as above, step 1 is identical -> mean (KL + 0) / 2
    teacher = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]])
    student = torch.tensor([[[0.0, math.log(3.0)], [1.0, 2.0]]])
    ntk = HeadSpec("ctc", "sequence", "NTK", "logit", 2)
    tnk = HeadSpec("ctc", "sequence", "TNK", "logit", 2)
    want = KL_HALF_VS_QUARTER / 2
    assert head_loss(ntk, student, teacher).item() == pytest.approx(want, rel=1e-6)
    assert head_loss(tnk, student.transpose(0, 1), teacher.transpose(0, 1)).item() == pytest.approx(want, rel=1e-6)


def test_dense_multiclass_maps_use_kl_per_pixel() -> None:
    # [N=1, C=2, H=1, W=2]: pixel 0 differs as above, pixel 1 identical
    teacher = torch.tensor([[[[0.0, 5.0]], [[0.0, 1.0]]]])
    student = torch.tensor([[[[0.0, 5.0]], [[math.log(3.0), 1.0]]]])
    spec = HeadSpec("seg", "dense", "NCHW", "logit", 2)
    assert head_loss(spec, student, teacher).item() == pytest.approx(KL_HALF_VS_QUARTER / 2, rel=1e-6)


def test_single_channel_maps_bce_on_probabilities_mse_on_logits() -> None:
    s, t = torch.tensor([[[[0.25]]]]), torch.tensor([[[[0.5]]]])
    want = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert single_map_loss(s, t, "prob").item() == pytest.approx(want, rel=1e-6)
    assert head_loss(HeadSpec("map", "dense", "NCHW", "prob", 1), s, t).item() == pytest.approx(want, rel=1e-6)
    s, t = torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[3.0, 2.0]]]])
    assert single_map_loss(s, t, "logit").item() == pytest.approx((4 + 0) / 2)


def test_embedding_loss_cosine_plus_mse() -> None:
    assert embedding_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(1 + 1)
    assert embedding_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0 + 0.5)


def test_multi_output_loss_is_the_mean_and_teacher_gets_no_gradient() -> None:
    specs = [HeadSpec("logits", "classify", "NK", "logit", 2), HeadSpec("emb", "embedding", "ND", "logit", 2)]
    s_logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    t_logits = torch.tensor([[0.0, 0.0]], requires_grad=True)
    s_emb, t_emb = torch.tensor([[1.0, 0.0]], requires_grad=True), torch.tensor([[0.0, 1.0]])
    loss = distill_loss_fn(specs)((s_logits, s_emb), (t_logits, t_emb))
    assert loss.item() == pytest.approx((KL_HALF_VS_QUARTER + 2.0) / 2, rel=1e-6)
    loss.backward()
    assert s_logits.grad is not None and s_emb.grad is not None and t_logits.grad is None
    with pytest.raises(ValueError, match="2 heads"):
        distill_loss(specs, s_logits, t_logits)
