"""Test-wide settings: single-threaded torch (2-core CI machines), no progress bars."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
