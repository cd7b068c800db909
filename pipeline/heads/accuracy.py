"""Accuracy against labels, per output kind (plain numpy, canonical layouts; see :mod:`pipeline.heads.fidelity`).

* classify: top-1 accuracy against ``[N]`` integer labels;
* dense: ``miou`` (pooled per class over the classes in the labels or the prediction, the class maps made as in
  :func:`~pipeline.heads.fidelity.class_maps`: a single-channel map is foreground/background) and ``pixel_acc``,
  against ``[N, H, W]`` integer label maps at the output's resolution; ``ignore_index`` pixels are left out;
* sequence: exact-sequence accuracy of greedy CTC decoding against label sequences (a list of integer sequences, or
  an ``[N, L]`` array padded with negative values).

:func:`label_accuracy` returns the kind's headline figure as ``accuracy`` (top-1, mIoU, exact sequence).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pipeline.errors import ConfigError, InputError
from pipeline.heads.fidelity import class_maps, ctc_greedy_decode, pooled_iou
from pipeline.heads.kinds import HeadSpec


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``[N, K]`` rows whose argmax is the label."""
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    if len(logits) != len(labels):
        raise InputError(f"accuracy: {len(logits)} predictions but {len(labels)} labels; the labels must be one class "
                         "index per sample (for maps or sequences, set `task` to dense or sequence)")
    return float(np.mean(logits.argmax(1) == labels)) if len(labels) else 1.0


def dense_label_scores(maps: np.ndarray, labels: np.ndarray, values: str = "logit", threshold: float | None = None,
                       ignore_index: int | None = None) -> dict[str, float]:
    """mIoU and pixel accuracy of ``[N, C, H, W]`` maps against ``[N, H, W]`` label maps."""
    maps, labels = np.asarray(maps), np.asarray(labels).astype(np.int64)
    if labels.shape != (maps.shape[0], *maps.shape[2:]):
        raise InputError(f"accuracy: label maps are {labels.shape} but the model's maps are {maps.shape}; give one "
                         f"integer label map per image at the output's resolution {tuple(maps.shape[2:])}")
    pred = class_maps(maps, values, threshold)
    valid = np.ones(labels.shape, dtype=bool) if ignore_index is None else labels != ignore_index
    pred, labels = pred[valid], labels[valid]
    classes = sorted(set(np.unique(labels).tolist()) | set(np.unique(pred).tolist()))
    return {"miou": pooled_iou(pred, labels, classes), "pixel_acc": float(np.mean(pred == labels)) if labels.size else 1.0}


def _label_seqs(labels: Any) -> list[tuple[int, ...]]:
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        return [tuple(int(c) for c in row if c >= 0) for row in labels]
    return [tuple(int(c) for c in row) for row in labels]


def ctc_exact_accuracy(logits: np.ndarray, labels: Sequence[Sequence[int]] | np.ndarray, blank: int = 0) -> float:
    """Fraction of samples whose greedy CTC decoding of ``[N, T, K]`` scores equals its label sequence."""
    seqs, want = ctc_greedy_decode(logits, blank), _label_seqs(labels)
    if len(seqs) != len(want):
        raise InputError(f"accuracy: {len(seqs)} sequences predicted but {len(want)} label sequences")
    return float(np.mean([a == b for a, b in zip(seqs, want)])) if want else 1.0


def label_accuracy(spec: HeadSpec, out: Any, labels: Any, ignore_index: int | None = None) -> dict[str, float]:
    """Accuracy of one output (raw, in the model's layout) against labels; ``accuracy`` is the kind's headline figure.

    Raises:
        ConfigError: labels for an embedding output (it has no classes to be right about).
        InputError: labels that do not fit the output (count or map size).
    """
    o = spec.canonical(np.asarray(out))
    if spec.kind == "classify":
        return {"accuracy": top1_accuracy(o, labels)}
    if spec.kind == "dense":
        s = dense_label_scores(o, labels, spec.values, ignore_index=ignore_index)
        return {"accuracy": s["miou"], **s}
    if spec.kind == "sequence":
        return {"accuracy": ctc_exact_accuracy(o, labels, spec.blank)}
    raise ConfigError(f"accuracy: output {spec.name} is an embedding, which labels cannot score; drop its labels "
                      "(its fidelity, cosine to the original, is gated instead)")
