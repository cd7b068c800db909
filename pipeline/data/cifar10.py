"""``cifar10:PATH``: the CIFAR-10 batches, binary version (primary) or python version (restricted unpickler).

Binary files (``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``) hold records of 1 label byte + 3,072
pixel bytes (1,024 red, 1,024 green, 1,024 blue, row-major 32x32). The python version's files are pickles; they are
parsed by an unpickler that allows exactly the numpy globals needed to rebuild an array, so a tampered file cannot
run code.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.core import DATASETS, DatasetSplits, finish, resize, split_indices
from pipeline.errors import ConfigError, InputError

RECORD = 1 + 3 * 32 * 32
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Upper bound on one batch file: 10,000 records (the real files) with generous headroom; stops absurd allocations.
_MAX_FILE_BYTES = 64 * 1024 * 1024


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _reconstruct
    for mod in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "ndarray")] = np.ndarray
        allowed[(mod, "dtype")] = np.dtype
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1"); only that one codec is allowed.
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding.replace("-", "").lower() not in ("latin1", "iso88591") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed in a CIFAR-10 batch")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``numpy ... _reconstruct``, ``numpy.ndarray``, ``numpy.dtype`` (and latin-1 byte
    strings from protocol-2 pickles written by Python 3); every other global is refused."""

    _ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed numpy global; refuse everything else."""
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch") from None


def read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one binary batch into uint8 images ``(N, 3, 32, 32)`` and int64 labels.

    Raises:
        InputError: wrong length or labels outside 0..9.
    """
    size = path.stat().st_size
    if size == 0 or size % RECORD != 0 or size > _MAX_FILE_BYTES:
        raise InputError(f"CIFAR-10 file {str(path)!r} has {size} bytes, not a positive multiple of {RECORD} "
                         f"(1 label byte + 3072 pixel bytes per image); the file is truncated or not CIFAR-10 binary")
    data = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD)
    labels = data[:, 0].astype(np.int64)
    _check_labels(labels, path)
    return data[:, 1:].reshape(-1, 3, 32, 32), labels


def _check_labels(labels: np.ndarray, path: Path) -> None:
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if len(bad):
        raise InputError(f"CIFAR-10 file {str(path)!r}: record {int(bad[0])} has label {int(labels[bad[0]])}, outside "
                         f"0..9; the file is corrupt")


def read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one python-version batch (a pickled dict) with :class:`RestrictedUnpickler`.

    Raises:
        InputError: disallowed globals, malformed content, wrong shapes or labels.
    """
    size = path.stat().st_size
    if size > _MAX_FILE_BYTES:
        raise InputError(f"CIFAR-10 file {str(path)!r} is {size} bytes, too large for a batch; it is not CIFAR-10")
    try:
        obj = RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as e:
        raise InputError(f"CIFAR-10 file {str(path)!r} is not a valid python-version batch ({e}); use the binary "
                         f"version (cifar-10-batches-bin) or re-download the files") from e
    if not isinstance(obj, dict):
        raise InputError(f"CIFAR-10 file {str(path)!r} holds a {type(obj).__name__}, not a batch dict")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = obj.get("data"), obj.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise InputError(f"CIFAR-10 file {str(path)!r} lacks the 'data' array or the 'labels' list")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise InputError(f"CIFAR-10 file {str(path)!r}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InputError(f"CIFAR-10 file {str(path)!r}: 'labels' is not a list of integers") from e
    if len(y) != len(data):
        raise InputError(f"CIFAR-10 file {str(path)!r}: {len(y)} labels for {len(data)} images")
    _check_labels(y, path)
    return data.reshape(-1, 3, 32, 32), y


def _locate(root: Path) -> tuple[Path, str]:
    for folder in (root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"):
        if (folder / "test_batch.bin").is_file() and (folder / "data_batch_1.bin").is_file():
            return folder, ".bin"
        if (folder / "test_batch").is_file() and (folder / "data_batch_1").is_file():
            return folder, ""
    raise InputError(f"CIFAR-10 folder {str(root)!r} holds neither data_batch_1.bin + test_batch.bin (binary version) "
                     f"nor data_batch_1 + test_batch (python version); point 'cifar10:PATH' at the extracted folder")


@DATASETS.register("cifar10", needs_path=True, default_input_size=32)
def load_cifar10(path: str | None, seed: int, input_size: int | None) -> DatasetSplits:
    """Load CIFAR-10: ``data_batch_1..5`` -> train/val (10 % val, stratified by ``seed``), ``test_batch`` -> test.

    Args:
        path: the folder with the batch files (or its parent holding cifar-10-batches-bin/-py).
        seed: val split seed.
        input_size: resize to this side (default 32).

    Raises:
        ConfigError: no path.
        InputError: missing files, wrong file lengths, bad labels, unsafe or malformed pickles.
    """
    if not path:
        raise ConfigError("dataset 'cifar10' needs a folder: use 'cifar10:path/to/cifar-10-batches-bin'")
    root = Path(path).expanduser()
    if root.exists() and not root.is_dir():
        raise InputError(f"CIFAR-10 path {path!r} is a file, not a folder; pass the extracted cifar-10-batches-bin "
                         f"folder")
    if not root.is_dir():
        raise InputError(f"CIFAR-10 folder {path!r} does not exist; download and extract the binary version there")
    folder, ext = _locate(root)
    reader = read_bin_batch if ext == ".bin" else read_py_batch
    train = [reader(folder / f"data_batch_{i}{ext}") for i in range(1, 6) if (folder / f"data_batch_{i}{ext}").is_file()]
    xte, yte = reader(folder / f"test_batch{ext}")
    xtr = np.concatenate([x for x, _ in train])
    ytr = np.concatenate([y for _, y in train])
    names = CLASS_NAMES
    meta = folder / "batches.meta.txt"
    if meta.is_file():
        lines = [ln.strip() for ln in meta.read_text(errors="replace").splitlines() if ln.strip()]
        if len(lines) == 10:
            names = lines
    tr, va, _ = split_indices(len(ytr), ytr, seed, (0.9, 0.1, 0.0))
    size = int(input_size or 32)

    def to_float(a: np.ndarray) -> torch.Tensor:
        return resize(torch.from_numpy(a).float().div_(255.0), size)

    xs = (to_float(xtr[tr]), to_float(xtr[va]), to_float(xte))
    ys = tuple(torch.from_numpy(np.ascontiguousarray(y)) for y in (ytr[tr], ytr[va], yte))
    return finish("cifar10", xs, ys, 10, names)
