"""Bad dataset inputs (issue 17): each built in tmp_path, each refused with a message naming problem and fix."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.data.cifar10 import load_cifar10
from pipeline.data.core import split_indices
from pipeline.data.imagefolder import MAX_IMAGE_PIXELS, load_imagefolder
from pipeline.data.npz import MAX_CLASSES, load_npz
from pipeline.errors import InputError
from pipeline.models.sanity import check_min_input


def _folder(root: Path, classes: int = 2, per: int = 6, size: int = 8, const: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per):
            a = np.full((size, size), 7, np.uint8) if const else rng.integers(0, 256, (size, size), dtype=np.uint8)
            Image.fromarray(a, "L").save(d / f"{i}.png")
    return root


def test_decompression_bomb(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds")
    side = int(np.sqrt(MAX_IMAGE_PIXELS)) + 64  # just above the limit: Pillow warns, we refuse
    Image.new("L", (side, side)).save(root / "c0" / "bomb.png")
    with pytest.raises(InputError, match=r"bomb.png' is too large.*decompression bombs: downscale or remove it"):
        load_imagefolder(str(root), 0, 8)
    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS


def test_non_image_file_warned(tmp_path: Path) -> None:
    from pipeline.data.imagefolder import log
    from tests.helpers.logs import captured

    root = _folder(tmp_path / "ds")
    (root / "c1" / "labels.csv").write_text("a,b\n")
    with captured(log, logging.WARNING) as records:
        data = load_imagefolder(str(root), 0, None)
    assert data.num_classes == 2
    assert any("labels.csv" in r.getMessage() and "remove it" in r.getMessage() for r in records)


def test_fake_png_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds")
    (root / "c0" / "fake.png").write_text("not a png")
    with pytest.raises(InputError, match=r"fake.png' cannot be read.*replace or delete it"):
        load_imagefolder(str(root), 0, None)


def test_16bit_png_scaled(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds")
    a = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(a).save(root / "c0" / "deep.png")  # a 16-bit grayscale PNG (decodes as I;16 or I)
    with Image.open(root / "c0" / "deep.png") as im:
        assert im.mode.startswith("I")
    from pipeline.data.imagefolder import _read_images
    x = _read_images([(root / "c0" / "deep.png", 0)], None, True)
    assert float((x == 1.0).float().mean()) < 0.05  # was 99.7 % saturated
    assert torch.allclose(x.flatten(), torch.from_numpy(a.flatten() / 65535.0).float(), atol=1 / 255)


def test_one_class(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"one class only; a classifier needs at least two"):
        load_imagefolder(str(_folder(tmp_path / "ds", classes=1)), 0, None)


def test_constant_images(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"training images are identical; check the data"):
        load_imagefolder(str(_folder(tmp_path / "ds", const=True)), 0, None)


def test_too_few_samples() -> None:
    with pytest.raises(InputError, match=r"2 samples; at least 3 are needed.*add samples"):
        split_indices(2, np.array([0, 1]), 0)


def test_npz_huge_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    y = np.arange(20) % 2
    y[3] = 50_000_000
    p = tmp_path / "big.npz"
    np.savez(p, x=x, y=y)
    with pytest.raises(InputError, match=rf"50000001 classes .* for 20 samples; at most {MAX_CLASSES} classes"):
        load_npz(str(p), 0, None)
    p2 = tmp_path / "decl.npz"
    np.savez(p2, x=x, y=np.arange(20) % 2, num_classes=np.array(MAX_CLASSES + 1))
    with pytest.raises(InputError, match=r"at most 10000 classes"):
        load_npz(str(p2), 0, None)


def test_directories_as_files(tmp_path: Path) -> None:
    d = tmp_path / "d.npz"
    d.mkdir()
    with pytest.raises(InputError, match=r"is a directory, not a file"):
        load_npz(str(d), 0, None)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match=r"is a file, not a folder"):
        load_imagefolder(str(f), 0, None)
    with pytest.raises(InputError, match=r"is a file, not a folder"):
        load_cifar10(str(f), 0, None)


def test_min_input() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.MaxPool2d(2), nn.Flatten(),
                        nn.LazyLinear(2))
    check_min_input(net, 1, 16)
    with pytest.raises(InputError, match=r"cannot process 4x4 inputs.*smaller than the network.s downsampling.*dataset.input_size"):
        check_min_input(nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3)), 1, 4)
    with pytest.raises(InputError, match=r"needs inputs of at least 32x32.*dataset.input_size"):
        check_min_input(32, 3, 16, "vgg11")
