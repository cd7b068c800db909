"""Fixtures for the finetune tests: the toy task and a trained TinyNet teacher (both from tests/helpers/toy_models.py),
shared by the session and guarded against changes. The helpers are re-exported for the tests that import them here.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.data import DatasetSplits
from tests.helpers.toy_models import NUM_CLASSES, TinyNet, ce_loss, make_data, make_split, train_quick  # noqa: F401
from tests.helpers.trees import module_digest, tensors_digest


@pytest.fixture(scope="session")
def data() -> DatasetSplits:
    return make_data()


@pytest.fixture(scope="session")
def teacher(data: DatasetSplits) -> nn.Module:
    torch.manual_seed(0)
    return train_quick(TinyNet(), data)


@pytest.fixture(autouse=True)
def _session_fixtures_unchanged(request):
    """A test may read the session-scoped ``data`` and ``teacher`` but never change them (weights, flags, tensors)."""
    digests = {"teacher": module_digest, "data": tensors_digest}
    used = {name: fn for name, fn in digests.items() if name in request.fixturenames}
    before = {name: fn(request.getfixturevalue(name)) for name, fn in used.items()}
    yield
    changed = [name for name, fn in used.items() if fn(request.getfixturevalue(name)) != before[name]]
    assert not changed, f"this test changed the session fixture(s) {changed}; work on a copy (e.g. teacher_copy)"


@pytest.fixture()
def teacher_copy(teacher: nn.Module) -> nn.Module:
    return copy.deepcopy(teacher)
