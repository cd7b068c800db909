"""Datasets: in-memory train/val/test splits, a registry of loaders, and a cheap deterministic batch loader.

Public API (other subsystems code against exactly this):

* :class:`Split`, :class:`DatasetSplits` -- the containers.
* ``DATASETS`` -- ``Registry`` of loaders ``loader(path: str | None, seed: int, input_size: int | None)``.
* :func:`load_dataset` -- ``"digits"``, ``"shapes"``, ``"mnist5k"``, ``"npz:PATH"``, ``"imagefolder:PATH"``,
  ``"cifar10:PATH"``.
* :func:`make_loader` -- mini-batches from a split, seeded.
* :func:`dataset_names` -- the registered names.
"""
from __future__ import annotations

from typing import Iterable

import torch

from pipeline.data.core import DATASETS, DatasetSplits, Loader, Split, as_hw
from pipeline.errors import ConfigError

# Importing the loader modules registers them (order = the order `list datasets` shows).
from pipeline.data import digits as _digits  # noqa: E402,F401
from pipeline.data import shapes as _shapes  # noqa: E402,F401
from pipeline.data import mnist as _mnist  # noqa: E402,F401
from pipeline.data import npz as _npz  # noqa: E402,F401
from pipeline.data import imagefolder as _imagefolder  # noqa: E402,F401
from pipeline.data import cifar10 as _cifar10  # noqa: E402,F401

__all__ = ["DATASETS", "NO_SIZES", "DatasetSplits", "Split", "SplitSizes", "as_hw", "check_split_sizes", "dataset_names",
           "load_dataset", "make_loader"]


def dataset_names() -> list[str]:
    """Registered dataset names (those taking a path are written ``name:PATH``).

    Returns:
        The names in registration order.
    """
    return DATASETS.names()


#: split sizes of a dataset load: (train, val, test), None = the dataset's default
SplitSizes = tuple[int | None, int | None, int | None]
NO_SIZES: SplitSizes = (None, None, None)


def check_split_sizes(spec: str, split_sizes: SplitSizes) -> None:
    """Raise ConfigError when sizes are set for a dataset whose split is fixed by its files, or are not >= 1."""
    name = spec.partition(":")[0]
    if all(s is None for s in split_sizes):
        return
    if not DATASETS.meta(name).get("split_sizes", False):
        sized = [n for n in DATASETS.names() if DATASETS.meta(n).get("split_sizes", False)]
        raise ConfigError(f"dataset {name!r} has the split its source gives, so dataset.train_size/val_size/test_size "
                          f"cannot be set for it; remove them (they apply to: {', '.join(sized)})")
    for key, s in zip(("train_size", "val_size", "test_size"), split_sizes):
        if s is not None and int(s) < 1:
            raise ConfigError(f"dataset.{key}={s} must be >= 1 (or null for the dataset's default)")


def load_dataset(spec: str, seed: int = 0, input_size: "int | tuple[int, int] | None" = None,
                 split_sizes: SplitSizes = NO_SIZES) -> DatasetSplits:
    """Load a dataset into memory, split and normalised.

    Args:
        spec: ``name`` or ``name:PATH`` (e.g. ``"digits"``, ``"npz:data/x.npz"``).
        seed: the only randomness (splits; generation for ``shapes``).
        input_size: ``(H, W)`` (or one side for a square) to produce/resize to; None keeps the dataset's natural
            size. Files (npz, image folders) take any H x W; generated datasets are square.
        split_sizes: ``(train, val, test)`` image counts for a generated dataset (config section ``dataset``);
            None entries keep the dataset's defaults.

    Returns:
        The dataset's splits and metadata.

    Raises:
        ConfigError: unknown name (known ones listed), a missing or superfluous path, a bad input size, or split
            sizes for a dataset whose split its files fix.
        InputError: the dataset's files are missing or malformed.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"dataset spec {spec!r} is empty; use one of: {', '.join(DATASETS.names())}")
    name, _, path = spec.partition(":")
    loader = DATASETS.get(name)
    hw = None if input_size is None else as_hw(input_size)
    if hw is not None and (min(hw) < 4 or max(hw) > 1024):
        raise ConfigError(f"dataset {spec!r}: input_size={input_size} is out of range; use 4..1024 per side")
    any_hw = DATASETS.meta(name).get("any_hw", False)
    if hw is not None and hw[0] != hw[1] and not any_hw:
        raise ConfigError(f"dataset {name!r} is generated square; input_size={list(hw)} is not; use a square size, "
                          f"or an npz/imagefolder dataset for H != W")
    needs_path = DATASETS.meta(name).get("needs_path", False)
    if needs_path and not path:
        raise ConfigError(f"dataset {name!r} needs a path: write it as '{name}:PATH'")
    if not needs_path and path:
        raise ConfigError(f"dataset {name!r} takes no path (got {path!r}); write plain '{name}'")
    check_split_sizes(spec, split_sizes)
    size = None if hw is None else (hw if any_hw else hw[0])
    if DATASETS.meta(name).get("split_sizes", False):
        return loader(path or None, int(seed), size, split_sizes=tuple(split_sizes))
    return loader(path or None, int(seed), size)


def make_loader(split: Split, batch_size: int, shuffle: bool, seed: int,
                augment: bool = False) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    """Mini-batches ``(x, y)`` from an in-memory split (no worker processes); ``y`` is None for unlabelled splits.

    Iterating twice yields identical batches: the order and the augmentation depend only on ``seed`` (pass
    ``seed + epoch`` for a new order per epoch).

    Args:
        split: the data.
        batch_size: samples per batch; the last batch may be smaller.
        shuffle: shuffle with a seeded permutation.
        seed: randomness seed.
        augment: random crop with 2-pixel padding, plus a horizontal flip unless ``split.hflip`` is False.

    Returns:
        A re-iterable object with ``len()`` = number of batches.

    Raises:
        ConfigError: batch_size < 1.
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    return Loader(split, int(batch_size), bool(shuffle), int(seed), bool(augment))
