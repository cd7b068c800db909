"""``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (offline), upscaled to 32x32, one channel."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.data.core import DATASETS, DatasetSplits, finish, resize, split_indices
from pipeline.errors import ConfigError


@DATASETS.register("digits", needs_path=False, default_input_size=32)
def load_digits(path: str | None, seed: int, input_size: int | None) -> DatasetSplits:
    """Load sklearn's digits, scale to [0, 1], upscale bilinearly and split 60/10/30 % stratified by ``seed``.

    Args:
        path: must be None (the data ships with scikit-learn).
        seed: split seed.
        input_size: output side (default 32).

    Returns:
        The splits (test split: 539 images).
    """
    if path:
        raise ConfigError(f"dataset 'digits' takes no path (got {path!r}); use plain 'digits'")
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    x = torch.from_numpy(bunch.data.astype(np.float32).reshape(-1, 1, 8, 8) / 16.0)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    x = resize(x, int(input_size or 32))
    tr, va, te = split_indices(len(y), bunch.target, seed)
    parts = [torch.from_numpy(i) for i in (tr, va, te)]
    # Mirrored digits are different (or no) digits, so the loader must not flip them.
    return finish("digits", tuple(x[i] for i in parts), tuple(y[i] for i in parts), 10,
                  [str(i) for i in range(10)], hflip=False)
