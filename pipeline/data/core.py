"""Dataset containers, the dataset registry and the helpers every loader shares (splitting, normalising, resizing)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import InputError
from pipeline.registry import Registry


@dataclass
class Split:
    """One split of a dataset, fully in memory.

    Attributes:
        x: float32 ``(N, C, H, W)``, already normalised by the dataset's mean/std.
        y: int64 labels, or None when the dataset has no labels: ``(N,)`` class indices, ``(N, H, W)`` label maps
            (dense outputs), or ``(N, L)`` label sequences padded with negative values (CTC sequence outputs).
        hflip: whether a horizontal flip preserves the label (False for digits, where a mirrored 2 is no 2); read by
            :func:`make_loader` when ``augment=True``. Defaults to True so ``Split(x, y)`` keeps working.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    hflip: bool = field(default=True, repr=False)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def class_labels(self) -> bool:
        """Whether the split has one class index per image (what top-1 accuracy and training need)."""
        return self.y is not None and self.y.ndim == 1

    @property
    def label_kind(self) -> str | None:
        """``class``, ``map`` (``(N, H, W)``), ``sequence`` (``(N, L)``) or None (unlabelled)."""
        return label_kind(self.y)


def label_kind(y: "torch.Tensor | np.ndarray | None") -> str | None:
    """What a label array holds, from its rank: ``class`` (N,), ``sequence`` (N, L), ``map`` (N, H, W)."""
    if y is None:
        return None
    return {1: "class", 2: "sequence", 3: "map"}.get(int(y.ndim), "unknown")


@dataclass
class DatasetSplits:
    """A dataset's train/val/test splits and what a model needs to know about them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]

    @property
    def input_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the images (``input_size`` is kept as W for square-only callers)."""
        return int(self.train.x.shape[-2]), int(self.train.x.shape[-1])


def as_hw(size: "int | tuple[int, int] | list[int]") -> tuple[int, int]:
    """``(H, W)`` from one side (square) or a pair."""
    if isinstance(size, (tuple, list)):
        h, w = size
        return int(h), int(w)
    return int(size), int(size)


#: name -> loader(path: str | None, seed: int, input_size: int | None) -> DatasetSplits
DATASETS: Registry[Callable[..., DatasetSplits]] = Registry("dataset")

# Fractions (train, val, test) used when a dataset does not come pre-split.
DEFAULT_FRACTIONS = (0.6, 0.1, 0.3)


def split_indices(n: int, y: np.ndarray | None, seed: int,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded, stratified train/val/test index split with exact global sizes.

    Each sample gets a key ``(rank within its class + 0.5) / class size`` (ranks from a seeded permutation); sorting by
    that key interleaves the classes evenly, so taking the first ``n_test`` then ``n_val`` samples gives every split
    the class proportions of the whole set (to within one sample per class) while the split sizes are exact.

    Args:
        n: number of samples.
        y: integer labels (stratify on them) or None (plain seeded split).
        seed: the only source of randomness.
        fractions: (train, val, test) fractions; a non-zero val/test fraction gets at least one sample.

    Returns:
        ``(train_idx, val_idx, test_idx)``, each in a seeded random order.

    Raises:
        InputError: too few samples for the requested splits.
    """
    want_val, want_test = fractions[1] > 0, fractions[2] > 0
    need = 1 + int(want_val) + int(want_test)
    if n < need:
        raise InputError(f"dataset has {n} samples; at least {need} are needed to form the train/val/test splits; "
                         f"add samples or provide the splits yourself")
    rng = np.random.default_rng(seed)
    # A split asked for gets at least one sample, and train always keeps at least one.
    n_test = min(n - need + 1, max(1, int(round(n * fractions[2])))) if want_test else 0
    n_val = min(n - 1 - n_test, max(1, int(round(n * fractions[1])))) if want_val else 0
    perm = rng.permutation(n)
    if y is None:
        order = perm
    else:
        yp = np.asarray(y)[perm]
        key = np.empty(n, dtype=np.float64)
        for c in np.unique(yp):
            where = np.flatnonzero(yp == c)
            key[where] = (np.arange(len(where)) + 0.5) / len(where)
        order = perm[np.argsort(key, kind="stable")]
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return rng.permutation(train), rng.permutation(val), rng.permutation(test)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``(N, C, H, W)`` data (std floored so constant channels are safe)."""
    xd = x.double()
    mean = xd.mean(dim=(0, 2, 3))
    std = xd.std(dim=(0, 2, 3), unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, float32."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x.float() - m) / s).contiguous()


def resize(x: torch.Tensor, size: "int | tuple[int, int]", chunk: int = 1024) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` float images to ``size`` (one side: square; or ``(H, W)``), antialiased
    when shrinking, chunked. The aspect ratio is not kept (each axis is scaled on its own, no padding): a model with
    a fixed input expects the whole image in its frame, and padding would feed it borders it never saw."""
    h, w = as_hw(size)
    if tuple(x.shape[-2:]) == (h, w):
        return x
    shrink = h < x.shape[-2] or w < x.shape[-1]
    out = [F.interpolate(x[i:i + chunk].float(), size=(h, w), mode="bilinear", align_corners=False,
                         antialias=shrink) for i in range(0, x.shape[0], chunk)]
    return torch.cat(out) if out else x.float().new_zeros((0, x.shape[1], h, w))


def check_content(name: str, x_parts: tuple[torch.Tensor, ...], y_parts: tuple[torch.Tensor | None, ...],
                  num_classes: int) -> None:
    """Refuse data nothing can be learned from: a single class, empty splits, or identical images everywhere.

    Raises:
        InputError: naming the dataset, the problem and the fix.
    """
    labelled = [y for y in y_parts if y is not None and y.ndim == 1]
    if labelled and int(num_classes) == 1:
        raise InputError(f"dataset {name!r} has one class only; a classifier needs at least two: add a second class "
                         f"folder/label")
    for split, x in zip(("train", "val", "test"), x_parts):
        if x.shape[0] == 0:
            raise InputError(f"dataset {name!r}: the {split} split is empty; add samples so every split gets some")
    if y_parts[0] is not None and all(y is None or y.dim() == 1 for y in y_parts):
        # Too few samples for the splits: a class seen only in val/test cannot be learned (and its accuracy is 0).
        # Class labels only ((N,) indices): label maps or sequences may rightly hold values some split lacks.
        seen = set(torch.unique(y_parts[0]).tolist())
        missing = sorted({int(c) for y in y_parts[1:] if y is not None for c in torch.unique(y).tolist()} - seen)
        if missing:
            total = sum(int(x.shape[0]) for x in x_parts)
            shown = ", ".join(map(str, missing[:10])) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
            raise InputError(f"dataset {name!r}: class(es) {shown} are in the val/test splits but not among the "
                             f"{int(x_parts[0].shape[0])} training images ({total} samples in all, too few for the "
                             f"splits); add samples (each class needs one per split at least) or provide the splits")
    xtr = x_parts[0]
    # Comparing two images first keeps the common case cheap (no full-size boolean tensor).
    if xtr.shape[0] > 1 and bool((xtr[1] == xtr[0]).all()) and bool((xtr == xtr[:1]).all()):
        raise InputError(f"dataset {name!r}: all {xtr.shape[0]} training images are identical; check the data "
                         f"(a blank export, a wrong array) before training on it")


def finish(name: str, x_parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
           y_parts: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None], num_classes: int,
           class_names: list[str], hflip: bool = True) -> DatasetSplits:
    """Normalise un-normalised float splits with the train split's per-channel statistics and package them.

    Statistics come from the train split only, so nothing about val/test leaks into preprocessing.
    """
    xtr, xva, xte = x_parts
    check_content(name, x_parts, y_parts, num_classes)
    mean, std = channel_stats(xtr)
    splits = [Split(normalise(x, mean, std), None if y is None else y.long().contiguous(), hflip)
              for x, y in zip(x_parts, y_parts)]
    return DatasetSplits(
        name=name, train=splits[0], val=splits[1], test=splits[2], num_classes=int(num_classes),
        in_channels=int(xtr.shape[1]), input_size=int(xtr.shape[-1]), mean=mean, std=std,
        class_names=list(class_names),
    )


def unnormalised(data: DatasetSplits) -> DatasetSplits:
    """A copy of ``data`` with the images as the dataset stores them: the train-split normalisation undone.

    For pretrained models that bring their own preprocessing (an imported ``.onnx``): the user stored the images the
    way the model expects them, so they must reach it unchanged. Loaders still scale uint8 images to [0, 1]. The
    copy records ``mean = 0`` and ``std = 1`` per channel, so checkpoint meta and reports state what the deployed
    model is fed. (Undoing ``(x - m) / s`` in float32 differs from the stored values by rounding only, ~1e-7.)
    """
    import dataclasses

    m = torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1)
    splits = {name: dataclasses.replace(getattr(data, name), x=(getattr(data, name).x * s + m).contiguous())
              for name in ("train", "val", "test")}
    c = len(data.mean)
    return dataclasses.replace(data, mean=(0.0,) * c, std=(1.0,) * c, **splits)


class Loader:
    """In-memory mini-batch iterator; every ``iter()`` replays the same seeded order and augmentation.

    Args:
        split: data to iterate.
        batch_size: samples per batch (the last batch may be smaller).
        shuffle: seeded permutation per iteration.
        seed: the only randomness source.
        augment: random crop (2-pixel zero padding, i.e. padding with the mean after normalisation) plus a random
            horizontal flip when ``split.hflip``.
    """

    PAD = 2

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int, augment: bool = False) -> None:
        self.split, self.batch_size, self.shuffle, self.seed, self.augment = split, batch_size, shuffle, seed, augment

    def __len__(self) -> int:
        return math.ceil(len(self.split.x) / self.batch_size)

    def _augment(self, x: torch.Tensor, g: torch.Tensor | torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.PAD
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=g)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=g)
        rows = dy[:, None] + torch.arange(h)[None, :]  # (B, H)
        cols = dx[:, None] + torch.arange(w)[None, :]  # (B, W)
        if self.split.hflip:
            flip = torch.rand(b, generator=g) < 0.5
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        # One gather for the whole batch: (B, 1, 1, 1) x (B, 1, H, 1) x (B, 1, 1, W) advanced indexing -> (B, H, W, C).
        out = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        g = torch.Generator().manual_seed(int(self.seed))
        n = len(self.split.x)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            x = self.split.x[idx]
            if self.augment:
                x = self._augment(x, g)
            yield x, (self.split.y[idx] if self.split.y is not None else None)
