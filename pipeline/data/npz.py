"""``npz:PATH``: arrays in a NumPy ``.npz`` (loaded with ``allow_pickle=False``), strictly validated."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.core import DATASETS, DatasetSplits, as_hw, finish, label_kind, resize, split_indices
from pipeline.errors import ConfigError, InputError

# Largest class count accepted (ImageNet-21k-sized heads are far beyond what this pipeline deploys).
MAX_CLASSES = 10_000


def to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """Bring ``(N,H,W)``, ``(N,H,W,C)`` or ``(N,C,H,W)`` images (C in 1, 3, 4) to ``(N, C, H, W)``.

    Args:
        x: the image array.
        where: name used in error messages (file and array).

    Raises:
        InputError: wrong rank or an unrecognisable layout.
    """
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise InputError(f"{where}: images must have 3 or 4 dimensions (N,H,W), (N,H,W,C) or (N,C,H,W); "
                         f"got shape {x.shape}")
    channels_last = x.shape[3] in (1, 3, 4)
    channels_first = x.shape[1] in (1, 3, 4)
    if channels_last and (not channels_first or x.shape[1] == x.shape[2]):
        return x.transpose(0, 3, 1, 2)
    if channels_first:
        return x
    raise InputError(f"{where}: cannot tell the channel axis of shape {x.shape}; store (N,H,W,C) or (N,C,H,W) with "
                     f"1, 3 or 4 channels")


def images_to_float(x: np.ndarray, where: str) -> torch.Tensor:
    """uint8 images scale to [0, 1]; float/other integer images are kept as given; anything else is refused."""
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / 255.0)
    if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        xf = x.astype(np.float32)
        if not np.isfinite(xf).all():
            raise InputError(f"{where}: images contain NaN or Inf; clean the data")
        return torch.from_numpy(xf)
    raise InputError(f"{where}: images have dtype {x.dtype}; store uint8 or float arrays")


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Validated int64 labels: ``(N,)`` class indices, ``(N, L)`` label sequences (negative values pad the end of a
    shorter sequence; for CTC sequence outputs) or ``(N, H, W)`` label maps (for dense outputs)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2, 3):
        raise InputError(f"{where}: labels must be (N,) class indices, (N, L) label sequences or (N, H, W) label "
                         f"maps, got shape {y.shape}")
    if len(y) != n:
        raise InputError(f"{where}: {len(y)} labels for {n} images; the first axis of x and y must match")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise InputError(f"{where}: labels must be integers, got non-integral floats; store class indices")
    elif not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{where}: labels have dtype {y.dtype}; store integer class indices 0..K-1")
    y = y.astype(np.int64)
    if y.ndim == 2:  # sequences: a padded tail only, so each row reads as one label sequence
        pad = y < 0
        if (pad[:, :-1] & ~pad[:, 1:]).any():
            raise InputError(f"{where}: a label sequence has a negative value before a real label; negative values "
                             f"may only pad the end of a row (N, L)")
    elif len(y) and y.min() < 0:
        raise InputError(f"{where}: label {int(y.min())} is negative; labels must be class indices 0..K-1")
    return y


@DATASETS.register("npz", needs_path=True, any_hw=True)
def load_npz(path: str | None, seed: int, input_size: "int | tuple[int, int] | None") -> DatasetSplits:
    """Load images ``x`` and optional labels ``y`` (plus optional ``x_val/y_val``, ``x_test/y_test``).

    Optional ``class_names`` (string array) or ``num_classes`` (scalar) fix the class count; otherwise it is
    ``max(y) + 1``. Without ``x_val``/``x_test`` the data are split 60/10/30 % (stratified when labelled) by ``seed``.

    Args:
        path: the ``.npz`` file.
        seed: split seed.
        input_size: resize to this ``(H, W)`` (or square side); None keeps the stored size (any H x W, the same in
            every split).

    Raises:
        ConfigError: no path.
        InputError: every malformed-file case, naming the file and the array.
    """
    if not path:
        raise ConfigError("dataset 'npz' needs a file: use 'npz:path/to/data.npz'")
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"npz dataset {path!r} is a directory, not a file; pass the .npz file inside it as 'npz:PATH'")
    if not p.is_file():
        raise InputError(f"npz dataset {path!r} does not exist; pass an existing .npz file as 'npz:PATH'")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK":
        raise InputError(f"npz dataset {path!r} is not an .npz (zip) archive; save it with numpy.savez(path, x=..., y=...)")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays: dict[str, Any] = {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickle, which is refused
        raise InputError(f"npz dataset {path!r} holds object arrays ({e}); store plain numeric arrays") from e
    except Exception as e:
        raise InputError(f"npz dataset {path!r} cannot be read ({type(e).__name__}: {e}); re-save it with numpy.savez") from e
    if "x" not in arrays:
        raise InputError(f"npz dataset {path!r} has no array 'x' (found: {', '.join(sorted(arrays)) or 'none'}); "
                         f"save images as x=..., labels as y=...")
    splits: dict[str, tuple[torch.Tensor, np.ndarray | None]] = {}
    for suffix in ("", "_val", "_test"):
        xk, yk = "x" + suffix, "y" + suffix
        if xk not in arrays:
            if yk in arrays:
                raise InputError(f"npz dataset {path!r} has {yk!r} but no {xk!r}; store both or neither")
            continue
        where = f"npz dataset {path!r} array {xk!r}"
        x = to_nchw(np.asarray(arrays[xk]), where)
        if x.shape[0] == 0:
            raise InputError(f"{where} is empty; store at least one image")
        h, w = x.shape[2], x.shape[3]
        if min(h, w) < 4 or max(h, w) > 8 * min(h, w):
            raise InputError(f"{where}: image size {h}x{w} is not a usable image (too small or too elongated)")
        xt = images_to_float(x, where)
        y = _labels(arrays[yk], x.shape[0], f"npz dataset {path!r} array {yk!r}") if yk in arrays else None
        splits[suffix] = (xt, y)
    labelled = [s for s, (_, y) in splits.items() if y is not None]
    if labelled and len(labelled) != len(splits):
        raise InputError(f"npz dataset {path!r}: some splits have labels and some do not; label all or none")
    kinds = {s: label_kind(splits[s][1]) for s in labelled}
    if len(set(kinds.values())) > 1:
        raise InputError(f"npz dataset {path!r}: splits hold different kinds of labels {kinds}; give every split "
                         f"the same kind (class indices, sequences or maps)")
    structured = any(k != "class" for k in kinds.values())  # maps / sequences: the model's outputs define the classes
    chans = {s: t.shape[1] for s, (t, _) in splits.items()}
    if len(set(chans.values())) > 1:
        raise InputError(f"npz dataset {path!r}: splits have different channel counts {chans}; make them equal")
    if input_size is None:
        sizes = {s: tuple(t.shape[-2:]) for s, (t, _) in splits.items()}
        if len(set(sizes.values())) > 1:
            raise InputError(f"npz dataset {path!r}: splits have different image sizes (H, W) {sizes}; set "
                             f"dataset.input_size: [H, W] to resize them all")
    class_names: list[str] | None = None
    if "class_names" in arrays:
        class_names = [str(c) for c in np.asarray(arrays["class_names"]).reshape(-1)]
    if class_names is not None:
        num_classes = len(class_names)
    elif "num_classes" in arrays:
        num_classes = int(np.asarray(arrays["num_classes"]).reshape(-1)[0])
    elif labelled and not structured:
        num_classes = int(max(int(splits[s][1].max()) for s in labelled)) + 1  # type: ignore[union-attr]
    else:
        num_classes = 0  # unlabelled and undeclared: build_model will ask for a class count
    for s in labelled:
        y = splits[s][1]
        if y is not None and len(y) and num_classes and int(y.max()) >= num_classes:
            raise InputError(f"npz dataset {path!r} array {'y' + s!r}: label {int(y.max())} is outside "
                             f"[0, {num_classes}); fix the labels or the class_names/num_classes array")
    n_samples = sum(len(t) for t, _ in splits.values())
    # A label like 5e7 would make the classifier (and any one-hot/bincount) allocate gigabytes: bound the class
    # count by a documented limit and, when inferred from labels, by the number of samples.
    if num_classes > MAX_CLASSES or (labelled and not structured and class_names is None
                                     and "num_classes" not in arrays and num_classes > n_samples):
        raise InputError(f"npz dataset {path!r}: {num_classes} classes (largest label {num_classes - 1}) for "
                         f"{n_samples} samples; at most {MAX_CLASSES} classes and no more classes than samples are "
                         f"accepted: labels must be 0..K-1 class indices")
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    size = as_hw(input_size) if input_size else tuple(int(v) for v in splits[""][0].shape[-2:])
    x, y = splits[""]
    strat = None if structured else y  # maps and sequences cannot be stratified by class
    if "_val" in splits and "_test" in splits:
        parts = [splits[""], splits["_val"], splits["_test"]]
    else:
        if "_test" in splits:  # carve val out of train only, test is given
            tr, va, _ = split_indices(len(x), strat, seed, (0.9, 0.1, 0.0))
            parts = [(x[tr], y[tr] if y is not None else None), (x[va], y[va] if y is not None else None),
                     splits["_test"]]
        elif "_val" in splits:
            tr, _, te = split_indices(len(x), strat, seed, (0.7, 0.0, 0.3))
            parts = [(x[tr], y[tr] if y is not None else None), splits["_val"],
                     (x[te], y[te] if y is not None else None)]
        else:
            tr, va, te = split_indices(len(x), strat, seed)
            parts = [(x[i], y[i] if y is not None else None) for i in (tr, va, te)]
    xs = tuple(resize(t, size) for t, _ in parts)
    ys = tuple(None if yy is None else torch.from_numpy(np.ascontiguousarray(yy)) for _, yy in parts)
    return finish(f"npz:{p.name}", xs, ys, num_classes, class_names)  # type: ignore[arg-type]
