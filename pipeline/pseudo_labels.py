"""Pseudo-labels for unlabelled datasets: the original (pretrained) model's top-1 predictions.

Why: a pretrained model (``--model model.onnx`` or ``--weights``) can be compressed without ground truth. Every
stage that needs labels (budget sensitivity, distillation's cross-entropy term, accuracy guards, the report) then
uses the original model's predictions, so every "accuracy" means *agreement with the original model*; the baseline
stage records that in its metrics and the report says it.

The baseline stage computes the labels once and writes them into its own artifact folder (``pseudo_labels.npz``),
so later stages - including resumed runs where the baseline is cached - fill in exactly the same labels.
"""
from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import atomic_write_bytes
from pipeline.errors import InputError
from pipeline.torch_eval import eval_mode

FILE = "pseudo_labels.npz"
#: value of the ``labels`` metric / report entry when the labels are pseudo-labels
PSEUDO = "pseudo (original model top-1)"
#: value when the dataset brought its own labels
DATASET = "dataset"
NOTE = "The dataset has no labels, so every accuracy is top-1 agreement with the original model"
_SPLITS = ("train", "val", "test")


@torch.no_grad()
def predict_labels(model: torch.nn.Module, data, batch: int = 256) -> dict[str, np.ndarray]:  # data: DatasetSplits
    """Top-1 predictions of ``model`` (eval mode, restored afterwards) on every split, as int64 arrays."""
    out: dict[str, np.ndarray] = {}
    with eval_mode(model):
        for name in _SPLITS:
            x = getattr(data, name).x
            preds = []
            for i in range(0, len(x), batch):
                logits = model(x[i:i + batch])
                logits = logits[0] if isinstance(logits, (tuple, list)) else logits
                preds.append(logits.argmax(dim=1).to(torch.int64).cpu())
            out[name] = (torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)).numpy()
    return out


def apply_labels(data, labels: dict[str, np.ndarray], num_classes: int):  # -> DatasetSplits
    """A copy of ``data`` whose splits carry ``labels`` and whose class count is ``num_classes``.

    Raises:
        InputError: a split's label count differs from its image count (the labels belong to other data).
    """
    splits = {}
    for name in _SPLITS:
        split = getattr(data, name)
        y = labels[name]
        if len(y) != len(split.x):
            raise InputError(f"pseudo-labels for split {name!r} count {len(y)} images but the split has "
                             f"{len(split.x)}; the dataset changed since the baseline stage - rerun with --force")
        splits[name] = dataclasses.replace(split, y=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))
    names = list(data.class_names) if len(data.class_names) == num_classes else [str(i) for i in range(num_classes)]
    return dataclasses.replace(data, num_classes=int(num_classes), class_names=names, **splits)


def save_labels(folder: str | Path, labels: dict[str, np.ndarray]) -> str:
    """Write ``pseudo_labels.npz`` into ``folder`` atomically; returns the file name."""
    buf = io.BytesIO()
    # np.savez stamps each member with the current time; a fixed stamp keeps the artifact's bytes (and so the cache
    # keys of every later stage) identical between runs. np.load reads the result like any .npz.
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in _SPLITS:
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(labels[name], dtype=np.int64), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, arr.getvalue())
    atomic_write_bytes(Path(folder) / FILE, buf.getvalue())
    return FILE


def load_labels(folder: str | Path) -> dict[str, np.ndarray] | None:
    """The pseudo-labels a baseline artifact folder holds, or None when it has none (a labelled dataset).

    Raises:
        InputError: the file is unreadable or malformed (it is part of a pipeline artifact: rerun with --force).
    """
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = {name: np.asarray(z[name]) for name in _SPLITS}
    except Exception as e:  # KeyError, ValueError, zipfile errors: all mean a damaged artifact
        raise InputError(f"pseudo-labels {str(path)!r} cannot be read ({type(e).__name__}: {e}); rerun the "
                         f"baseline stage with --force") from e
    for name, y in labels.items():
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise InputError(f"pseudo-labels {str(path)!r}: split {name!r} is not a 1-D array of class indices; "
                             f"rerun the baseline stage with --force")
    return labels
