"""Fixtures for the finetune tests: a tiny CNN and a tiny learnable synthetic task (4 classes of 1x8x8 images).

Each class has a fixed random 8x8 pattern; samples are pattern + Gaussian noise, so a small CNN learns the task in
a few epochs on one CPU thread.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data import DatasetSplits, Split
from pipeline.finetune.trainer import make_optimizer, train_epochs
from tests.helpers.trees import module_digest, tensors_digest

NUM_CLASSES = 4


class TinyNet(nn.Module):
    """Three 3x3 convs (the last strided) + global pooling + linear; top-level children features/pool/classifier."""

    def __init__(self, width: int = 32, in_channels: int = 1, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def make_split(n: int, seed: int, noise: float = 0.8) -> Split:
    """``n`` samples: the class pattern (fixed across splits) plus seeded noise."""
    patterns = torch.randn(NUM_CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = patterns[y] + noise * torch.randn(n, 1, 8, 8, generator=g)
    return Split(x, y)


def make_data(n_train: int = 256, noise: float = 0.8) -> DatasetSplits:
    """Tiny dataset splits (train 256, val 128, test 128 by default)."""
    return DatasetSplits(
        name="toy", train=make_split(n_train, 1, noise), val=make_split(128, 2, noise), test=make_split(128, 3, noise),
        num_classes=NUM_CLASSES, in_channels=1, input_size=8, mean=(0.0,), std=(1.0,),
        class_names=["a", "b", "c", "d"],
    )


def ce_loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    return F.cross_entropy(logits, y), {}


def train_quick(model: nn.Module, data: DatasetSplits, epochs: int = 6, seed: int = 0) -> nn.Module:
    """A few epochs of plain SGD (used to make trained teachers)."""
    opt = make_optimizer(model.parameters(), "sgd", 0.05, 5e-4)
    train_epochs(model, data, epochs=epochs, batch_size=32, optimizer=opt, loss_fn=ce_loss, seed=seed,
                 progress=False)
    return model.eval()


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
