"""The digits dataset (real data shipped with scikit-learn) and the batch loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data import DATASETS, Split, dataset_names, load_dataset, make_loader
from pipeline.data.core import split_indices
from pipeline.errors import ConfigError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_names_and_unknown() -> None:
    for name in ("digits", "npz", "imagefolder"):
        assert name in dataset_names()
    assert dataset_names() == DATASETS.names()
    with pytest.raises(ConfigError, match="known datasets: .*digits"):
        load_dataset("nosuchdata")
    with pytest.raises(ConfigError, match="needs a path"):
        load_dataset("npz")
    with pytest.raises(ConfigError, match="takes no path"):
        load_dataset("digits:/tmp/x")


def test_digits_shapes_and_ranges(digits) -> None:
    assert (digits.num_classes, digits.in_channels, digits.input_size) == (10, 1, 32)
    assert digits.class_names == [str(i) for i in range(10)]
    n = len(digits.train) + len(digits.val) + len(digits.test)
    assert n == 1797
    assert len(digits.test) >= 500 and len(digits.val) >= 150
    for s in (digits.train, digits.val, digits.test):
        assert s.x.dtype == torch.float32 and s.x.shape[1:] == (1, 32, 32)
        assert s.y is not None and s.y.dtype == torch.int64 and s.y.shape == (len(s.x),)
        assert int(s.y.min()) == 0 and int(s.y.max()) == 9
        assert torch.isfinite(s.x).all()
    # Normalised with the train split's statistics.
    assert abs(float(digits.train.x.mean())) < 1e-4
    assert abs(float(digits.train.x.std()) - 1.0) < 1e-3
    raw = (digits.train.x * digits.std[0] + digits.mean[0])
    assert float(raw.min()) > -1e-4 and float(raw.max()) < 1 + 1e-4  # pixel values /16 lie in [0, 1]
    assert 0.2 < digits.mean[0] < 0.4


def test_digits_stratified(digits) -> None:
    full = np.bincount(np.concatenate([s.y.numpy() for s in (digits.train, digits.val, digits.test)]), minlength=10)
    for s in (digits.train, digits.val, digits.test):
        counts = np.bincount(s.y.numpy(), minlength=10)
        expected = full * len(s) / full.sum()
        assert np.all(np.abs(counts - expected) <= 1.5), (counts, expected)


def test_digits_deterministic_and_seeded(digits) -> None:
    again = load_dataset("digits", seed=0)
    assert torch.equal(digits.test.x, again.test.x) and torch.equal(digits.test.y, again.test.y)
    other = load_dataset("digits", seed=1)
    assert len(other.test) == len(digits.test)
    assert not torch.equal(digits.test.y, other.test.y)


def test_digits_input_size() -> None:
    d = load_dataset("digits", seed=0, input_size=16)
    assert d.train.x.shape[1:] == (1, 16, 16) and d.input_size == 16


def test_split_indices_partition() -> None:
    y = np.repeat(np.arange(3), [50, 30, 20])
    tr, va, te = split_indices(100, y, seed=5)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(100))
    assert (len(tr), len(va), len(te)) == (60, 10, 30)
    tr, va, te = split_indices(3, None, seed=0)
    assert (len(tr), len(va), len(te)) == (1, 1, 1)


def test_loader_covers_split_and_is_deterministic(digits) -> None:
    loader = make_loader(digits.val, batch_size=32, shuffle=True, seed=7)
    batches = list(loader)
    assert len(loader) == len(batches) == (len(digits.val) + 31) // 32
    ys = torch.cat([y for _, y in batches])
    assert sorted(ys.tolist()) == sorted(digits.val.y.tolist())
    again = list(make_loader(digits.val, batch_size=32, shuffle=True, seed=7))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, list(loader)))  # re-iterable, same order
    other = list(make_loader(digits.val, batch_size=32, shuffle=True, seed=8))
    assert not torch.equal(batches[0][1], other[0][1])
    plain = list(make_loader(digits.val, batch_size=1000, shuffle=False, seed=0))
    assert torch.equal(plain[0][0], digits.val.x)


def test_augment_is_crop_and_flip() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    y = torch.tensor([0, 1])
    for hflip in (True, False):
        split = Split(x, y, hflip=hflip)
        seen_flip = False
        for seed in range(40):
            (xb, yb), = list(make_loader(split, 2, shuffle=False, seed=seed, augment=True))
            assert xb.shape == x.shape and torch.equal(yb, y)
            for i in range(2):
                # Every output is a shifted (by <= 2 px, zero-filled) and possibly mirrored copy of the input.
                ok = False
                for flip in (False, True):
                    src = x[i].flip(-1) if flip else x[i]
                    padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
                    for dy in range(5):
                        for dx in range(5):
                            if torch.equal(padded[:, dy:dy + 6, dx:dx + 6], xb[i]):
                                ok = True
                                seen_flip |= flip and not torch.equal(src, x[i])
                assert ok
        assert seen_flip == hflip


def test_unlabelled_split_loader() -> None:
    split = Split(torch.zeros(5, 1, 4, 4), None)
    batches = list(make_loader(split, 2, shuffle=True, seed=0, augment=True))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert all(b[1] is None for b in batches)
    with pytest.raises(ConfigError):
        make_loader(split, 0, shuffle=False, seed=0)
