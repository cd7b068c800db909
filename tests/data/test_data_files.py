"""npz and imagefolder datasets: good layouts load; each malformed input gives a clear InputError."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import load_dataset
from pipeline.errors import ConfigError, InputError


def _npz(tmp_path: Path, name: str = "d.npz", **arrays: np.ndarray) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return f"npz:{path}"


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts(tmp_path: Path, layout: str) -> None:
    shape = {"NHW": (12, 12), "NHWC": (12, 12, 3), "NCHW": (3, 12, 12)}[layout]
    x = _images(40, shape)
    y = np.arange(40) % 4
    d = load_dataset(_npz(tmp_path, x=x, y=y), seed=0)
    c = 1 if layout == "NHW" else 3
    assert (d.in_channels, d.input_size, d.num_classes) == (c, 12, 4)
    assert len(d.train) + len(d.val) + len(d.test) == 40
    assert d.train.x.shape[1:] == (c, 12, 12) and d.train.x.dtype == torch.float32
    # The pixel data survive: undo the normalisation and compare with the source images.
    idx = {tuple(v) for v in (x.reshape(40, -1) if layout != "NHWC" else x.transpose(0, 3, 1, 2).reshape(40, -1))}
    m = torch.tensor(d.mean).view(1, -1, 1, 1)
    s = torch.tensor(d.std).view(1, -1, 1, 1)
    raw = ((d.test.x * s + m) * 255).round().to(torch.uint8).reshape(len(d.test), -1).numpy()
    assert all(tuple(r) in idx for r in raw)


def test_npz_presplit_resize_and_unlabelled(tmp_path: Path) -> None:
    spec = _npz(tmp_path, x=_images(20, (10, 10, 3)), y=np.arange(20) % 2, x_val=_images(6, (10, 10, 3)),
                y_val=np.arange(6) % 2, x_test=_images(8, (10, 10, 3)), y_test=np.arange(8) % 2,
                class_names=np.array(["cat", "dog"]))
    d = load_dataset(spec, seed=0, input_size=16)
    assert (len(d.train), len(d.val), len(d.test)) == (20, 6, 8)
    assert d.class_names == ["cat", "dog"] and d.input_size == 16 and d.test.x.shape[-1] == 16
    d = load_dataset(_npz(tmp_path, "u.npz", x=np.random.rand(30, 8, 8).astype(np.float32)), seed=0)
    assert d.train.y is None and d.test.y is None and d.num_classes == 0
    d = load_dataset(_npz(tmp_path, "t.npz", x=_images(30, (8, 8)), y=np.arange(30) % 3, x_test=_images(5, (8, 8)),
                          y_test=np.arange(5) % 3), seed=0)
    assert len(d.test) == 5 and len(d.train) + len(d.val) == 30


def test_npz_any_geometry(tmp_path: Path) -> None:
    """Non-square images load at their stored H x W; ``input_size`` (H, W) resizes each axis on its own."""
    x = np.random.default_rng(0).random((20, 3, 12, 40)).astype(np.float32)
    d = load_dataset(_npz(tmp_path, "r.npz", x=x), seed=0)
    assert d.input_hw == (12, 40) and d.test.x.shape[1:] == (3, 12, 40)
    d = load_dataset(_npz(tmp_path, "r.npz", x=x), seed=0, input_size=(6, 20))
    assert d.input_hw == (6, 20)
    with pytest.raises(ConfigError, match="generated square"):
        load_dataset("digits", seed=0, input_size=(16, 32))


@pytest.mark.parametrize("case,arrays,match", [
    ("no_x", {"images": np.zeros((4, 8, 8))}, "no array 'x'"),
    ("bad_rank", {"x": np.zeros((4, 8))}, "3 or 4 dimensions"),
    ("mixed_sizes", {"x": np.zeros((4, 8, 12)), "x_test": np.zeros((4, 8, 8))}, r"dataset.input_size: \[H, W\]"),
    ("len_mismatch", {"x": np.zeros((4, 8, 8)), "y": np.zeros(5, dtype=np.int64)}, "5 labels for 4 images"),
    ("negative", {"x": np.zeros((4, 8, 8)), "y": np.array([0, 1, -1, 0])}, "negative"),
    ("float_labels", {"x": np.zeros((4, 8, 8)), "y": np.array([0.5, 1, 0, 0])}, "integers"),
    ("out_of_range", {"x": np.zeros((4, 8, 8)), "y": np.array([0, 1, 2, 0]), "num_classes": np.array(2)},
     r"outside \[0, 2\)"),
    ("y_without_x", {"x": np.zeros((4, 8, 8)), "y": np.zeros(4, dtype=int), "y_val": np.zeros(2, dtype=int)},
     "no 'x_val'"),
    ("nan", {"x": np.full((4, 8, 8), np.nan)}, "NaN"),
    ("channels", {"x": np.zeros((4, 8, 8, 7))}, "channel axis"),
])
def test_npz_bad(tmp_path: Path, case: str, arrays: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_dataset(_npz(tmp_path, **arrays), seed=0)


def test_npz_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    txt = tmp_path / "not.npz"
    txt.write_text("hello")
    with pytest.raises(InputError, match="not an .npz"):
        load_dataset(f"npz:{txt}")
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.array([{"a": 1}] * 4, dtype=object))
    with pytest.raises(InputError, match="object arrays"):
        load_dataset(f"npz:{obj}")


def _write_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (10, 10), mode: str = "RGB") -> None:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / name / f"img{i}.{'png' if i % 2 else 'jpg'}")


def test_imagefolder_good(tmp_path: Path) -> None:
    _write_folder(tmp_path / "ds", {"ant": 10, "bee": 10, "cow": 10})
    (tmp_path / "ds" / "ant" / "notes.txt").write_text("ignored")
    d = load_dataset(f"imagefolder:{tmp_path / 'ds'}", seed=0)
    assert d.class_names == ["ant", "bee", "cow"] and d.num_classes == 3
    assert (d.in_channels, d.input_size) == (3, 10)
    assert (len(d.train), len(d.val), len(d.test)) == (18, 3, 9)
    assert sorted(np.bincount(d.test.y.numpy()).tolist()) == [3, 3, 3]
    d16 = load_dataset(f"imagefolder:{tmp_path / 'ds'}", seed=0, input_size=16)
    assert d16.train.x.shape[1:] == (3, 16, 16)
    d_rect = load_dataset(f"imagefolder:{tmp_path / 'ds'}", seed=0, input_size=(8, 24))
    assert d_rect.input_hw == (8, 24)
    _write_folder(tmp_path / "wide", {"a": 5, "b": 5}, size=(30, 12))  # PIL (W, H): 12 high, 30 wide
    assert load_dataset(f"imagefolder:{tmp_path / 'wide'}", seed=0).input_hw == (12, 30)


def test_imagefolder_gray_and_presplit(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("test", 3)):
        _write_folder(tmp_path / "g" / split, {"a": n, "b": n}, mode="L")
    d = load_dataset(f"imagefolder:{tmp_path / 'g'}", seed=0)
    assert d.in_channels == 1 and len(d.test) == 6 and len(d.train) + len(d.val) == 12


def test_imagefolder_bad(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    _write_folder(tmp_path / "e", {"a": 3})
    (tmp_path / "e" / "b").mkdir()
    with pytest.raises(InputError, match=r"class .*e/b.* contains no PNG/JPEG"):
        load_dataset(f"imagefolder:{tmp_path / 'e'}")
    _write_folder(tmp_path / "u", {"a": 3, "b": 3})
    (tmp_path / "u" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match=r"broken.png.*cannot be read"):
        load_dataset(f"imagefolder:{tmp_path / 'u'}")
    _write_folder(tmp_path / "m", {"a": 3, "b": 3})
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "m" / "b" / "big.png")
    with pytest.raises(InputError, match=r"different sizes: .*10x10 .*big.png.* 12x12"):
        load_dataset(f"imagefolder:{tmp_path / 'm'}")
    d = load_dataset(f"imagefolder:{tmp_path / 'm'}", input_size=8)  # resizing resolves mixed sizes
    assert d.input_size == 8 and len(d.train) + len(d.val) + len(d.test) == 7
