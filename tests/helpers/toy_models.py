"""Toy models and a toy task shared by the tests (CPU, a few thousand parameters, trained in seconds).

* :func:`plain_cnn` -- 3x3 conv + ReLU stages, global pooling, a linear classifier (seeded);
* :class:`TinyNet` and :func:`make_data` -- a tiny CNN and a learnable synthetic task (4 classes of 1x8x8 images:
  a fixed random pattern per class plus Gaussian noise), with :func:`train_quick` to make trained teachers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data import DatasetSplits, Split
from pipeline.finetune.trainer import make_optimizer, train_epochs


def plain_cnn(in_channels: int, widths: tuple[int, ...], num_classes: int, pool: int = 1, seed: int = 0) -> nn.Sequential:
    """``[Conv3x3(pad 1) + ReLU] * len(widths) -> AdaptiveAvgPool(pool) -> Flatten -> Linear``, in eval mode, with
    weights drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    cin = in_channels
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU()]
        cin = w
    layers += [nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(cin * pool * pool, num_classes)]
    return nn.Sequential(*layers).eval()


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
