"""Regularizer values and gradients against hand-computed cases; energy pruning; rank alignment."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.finetune.regularizers import (
    SPARSITY,
    aligned_rank,
    double_orthogonality,
    energy_keep_mask,
    erank,
    hoyer,
    hoyer_square,
    l1,
    orthogonality,
)


def _orthonormal(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q if rows >= cols else q.t()


@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (4, 4)])
def test_orthogonality_zero_with_zero_gradient_for_orthonormal(shape: tuple[int, int]) -> None:
    a = _orthonormal(*shape).requires_grad_(True)
    loss = orthogonality(a)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert float(a.grad.abs().max()) < 1e-10


def test_orthogonality_hand_computed() -> None:
    # A = diag(2, 1) (2x2): G = diag(4, 1); ||G - I||^2 = 9; / r^2 = 9/4.
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = orthogonality(a)
    assert loss.item() == pytest.approx(9 / 4)
    loss.backward()
    # d/dA ||A^T A - I||^2 = 4 A (A^T A - I) -> diag(4*2*3, 0) = diag(24, 0); / 4 -> diag(6, 0)
    assert torch.allclose(a.grad, torch.tensor([[6.0, 0.0], [0.0, 0.0]]))


def test_orthogonality_uses_smaller_gram() -> None:
    # A 1x3 row [1, 1, 1]: smaller Gram is 1x1 = 3, so (3-1)^2 / 1 = 4 (the 3x3 side would give a different value).
    a = torch.ones(1, 3)
    assert float(orthogonality(a)) == pytest.approx(4.0)
    assert float(orthogonality(a.t())) == pytest.approx(4.0)


def test_double_orthogonality_values() -> None:
    # Square orthogonal: 0. Tall orthonormal 5x2: A^T A = I_2, A A^T projector of rank 2 -> ||P - I_5||^2 = 3.
    assert float(double_orthogonality(_orthonormal(4, 4))) == pytest.approx(0.0, abs=1e-12)
    assert float(double_orthogonality(_orthonormal(5, 2))) == pytest.approx(3.0, abs=1e-10)
    # 2 * I_2: ||4I - I||^2 twice = 2 * 2 * 9 = 36
    assert float(double_orthogonality(2 * torch.eye(2))) == pytest.approx(36.0)
    # Conv weights (n, c, 1, 1) are flattened to n x c.
    assert float(double_orthogonality(torch.eye(3).reshape(3, 3, 1, 1))) == pytest.approx(0.0)


def test_l1_value_and_gradient() -> None:
    s = torch.tensor([3.0, -2.0, 0.5], requires_grad=True)
    v = l1(s)
    v.backward()
    assert v.item() == pytest.approx(5.5)
    assert torch.equal(s.grad, torch.tensor([1.0, -1.0, 1.0]))


def test_hoyer_one_hot_is_one_and_constant_is_sqrt_n() -> None:
    assert float(hoyer(torch.tensor([0.0, 5.0, 0.0, 0.0]))) == pytest.approx(1.0)
    assert float(hoyer(torch.ones(9))) == pytest.approx(3.0)


def test_hoyer_gradient_hand_computed() -> None:
    # H = ||s||_1/||s||_2; dH/ds_i = sign(s_i)/||s||_2 - ||s||_1 s_i/||s||_2^3. s = (3, 4): ||.||_1 = 7, ||.||_2 = 5.
    s = torch.tensor([3.0, 4.0], requires_grad=True)
    hoyer(s).backward()
    expected = torch.tensor([1 / 5 - 7 * 3 / 125, 1 / 5 - 7 * 4 / 125])
    assert torch.allclose(s.grad, expected, atol=1e-6)


def test_hoyer_square_values_and_gradient() -> None:
    assert float(hoyer_square(torch.tensor([0.0, -2.0, 0.0]))) == pytest.approx(1.0)
    assert float(hoyer_square(torch.ones(7))) == pytest.approx(7.0)
    # HS = L1^2 / L2^2; dHS/ds_i = 2 L1 sign/L2^2 - 2 L1^2 s_i / L2^4. s = (3, 4): L1 = 7, L2^2 = 25.
    s = torch.tensor([3.0, 4.0], requires_grad=True)
    v = hoyer_square(s)
    v.backward()
    assert v.item() == pytest.approx(49 / 25)
    expected = torch.tensor([2 * 7 / 25 - 2 * 49 * 3 / 625, 2 * 7 / 25 - 2 * 49 * 4 / 625])
    assert torch.allclose(s.grad, expected, atol=1e-6)


def test_erank_of_equal_values_is_their_count() -> None:
    assert float(erank(torch.full((5,), 0.7))) == pytest.approx(5.0, rel=1e-6)
    assert float(erank(torch.tensor([2.0, 2.0, 2.0, 0.0, 0.0]))) == pytest.approx(3.0, rel=1e-6)
    assert float(erank(torch.tensor([0.0, 1.0]))) == pytest.approx(1.0, rel=1e-6)


def test_erank_hand_computed_and_finite_gradient() -> None:
    s = torch.tensor([3.0, 1.0, 0.0], requires_grad=True)
    v = erank(s)
    v.backward()
    p = torch.tensor([0.75, 0.25])
    assert v.item() == pytest.approx(math.exp(float(-(p * p.log()).sum())), rel=1e-6)
    assert torch.isfinite(s.grad).all()
    # Shrinking the small value lowers the effective rank: its gradient is positive.
    assert float(s.grad[1]) > 0


def test_sparsity_registry_names() -> None:
    assert set(SPARSITY.names()) == {"l1", "hoyer", "hoyer_square", "erank"}


def test_energy_prune_removes_exactly_the_expected_values() -> None:
    s = torch.tensor([1.0, 4.0, 2.0, 3.0])  # squares 1, 16, 4, 9; total 30
    # e = 0.1 -> budget 3: drop 1 (cum 1), 2 would make 5 > 3.
    assert energy_keep_mask(s, 0.1).tolist() == [False, True, True, True]
    # e = 5/30: 1 + 4 = 5 <= 5 -> drop both smallest (tie at the threshold drops).
    assert energy_keep_mask(s, 5 / 30).tolist() == [False, True, False, True]
    # e = 0.49: budget 14.7: 1 + 4 + 9 = 14 -> only the 4 stays.
    assert energy_keep_mask(s, 0.49).tolist() == [False, True, False, False]
    # e = 0 removes only exact zeros; at least one value is always kept.
    assert energy_keep_mask(torch.tensor([0.0, 2.0, 0.0]), 0.0).tolist() == [False, True, False]
    assert int(energy_keep_mask(torch.tensor([1.0, 1.0]), 0.99).sum()) == 1


def test_energy_prune_uses_magnitudes() -> None:
    assert energy_keep_mask(torch.tensor([-4.0, 0.1, 3.0]), 0.01).tolist() == [True, False, True]


def test_aligned_rank() -> None:
    assert aligned_rank(5, 8, 64) == 8
    assert aligned_rank(8, 8, 64) == 8
    assert aligned_rank(9, 8, 12) == 12  # clamped to full rank
    assert aligned_rank(5, 1, 64) == 5
