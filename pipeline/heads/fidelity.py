"""How close a variant's outputs stay to the original's, per output kind (plain numpy, canonical layouts).

* classify: ``agreement`` -- the fraction of samples whose top-1 class is the original's;
* dense: ``iou`` -- intersection over union of the thresholded maps, pooled over every pixel of every sample
  (threshold 0.5 on probability maps, 0 on logit maps -- the same decision boundary, sigmoid(0) = 0.5; multi-channel
  maps compare their argmax class maps, averaging the IoU over the classes either map uses), and ``mae`` -- the
  mean absolute difference of the raw values (in the map's own units);
* sequence (CTC): greedy decoding (argmax per step, repeats collapsed, blanks dropped); ``step_agreement`` -- the
  fraction of time steps where the argmaxes agree, over the steps where either argmax is not blank (so a silent
  variant scores 0, and the blank padding of a long line does not inflate it); ``exact`` -- the fraction of samples
  whose decoded sequences are identical;
* embedding: ``cosine`` -- the mean per-sample cosine similarity; ``rel_l2`` -- ``||out - ref|| / ||ref||`` over the
  whole batch.

Several outputs: :func:`multi_fidelity` gives every output's metrics; :mod:`pipeline.heads.gate` gates on the worst.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pipeline.errors import ValidationError
from pipeline.heads.kinds import HeadSpec

_EPS = 1e-12


def _check(ref: np.ndarray, out: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValidationError(f"{what}: the variant's output is {out.shape}, the original's {ref.shape}; "
                              "a variant must keep the original's output shapes")
    return ref, out


def classify_fidelity(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Top-1 agreement of ``[N, K]`` outputs."""
    ref, out = _check(ref, out, "classify")
    return {"agreement": float(np.mean(ref.argmax(1) == out.argmax(1))) if len(ref) else 1.0}


def map_threshold(values: str) -> float:
    """The binarising threshold of a single-channel map: 0.5 on probabilities, 0 on logits (sigmoid(0) = 0.5)."""
    return 0.5 if values == "prob" else 0.0


def class_maps(a: np.ndarray, values: str, threshold: float | None = None) -> np.ndarray:
    """``[N, C, H, W]`` maps -> ``[N, H, W]`` class indices (threshold for C == 1, argmax over channels else)."""
    if a.shape[1] == 1:
        thr = map_threshold(values) if threshold is None else threshold
        return (a[:, 0] > thr).astype(np.int64)
    return a.argmax(1)


def pooled_iou(pred: np.ndarray, ref: np.ndarray, classes: Sequence[int]) -> float:
    """Mean over ``classes`` of the IoU of ``pred == c`` and ``ref == c`` (pooled); classes in neither are skipped,
    and 1.0 when no class occurs at all (two empty maps agree)."""
    ious = []
    for c in classes:
        p, r = pred == c, ref == c
        union = np.logical_or(p, r).sum()
        if union:
            ious.append(np.logical_and(p, r).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


def dense_fidelity(ref: np.ndarray, out: np.ndarray, values: str = "logit",
                   threshold: float | None = None) -> dict[str, float]:
    """IoU of thresholded (C == 1: foreground only) or argmax (C > 1: mean over classes) maps, and mean abs error."""
    ref, out = _check(ref, out, "dense")
    rc, oc = class_maps(ref, values, threshold), class_maps(out, values, threshold)
    classes = [1] if ref.shape[1] == 1 else range(ref.shape[1])
    res = {"iou": pooled_iou(oc, rc, classes), "mae": float(np.abs(ref - out).mean()) if ref.size else 0.0}
    if ref.shape[1] == 1:
        res["threshold"] = map_threshold(values) if threshold is None else float(threshold)
    return res


def ctc_greedy_decode(logits: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of ``[N, T, K]`` scores: argmax per step, repeats collapsed, then blanks dropped."""
    best = np.asarray(logits).argmax(-1)
    seqs = []
    for row in best:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        seqs.append(tuple(int(c) for c in row[keep] if c != blank))
    return seqs


def sequence_fidelity(ref: np.ndarray, out: np.ndarray, blank: int = 0) -> dict[str, float]:
    """Non-blank per-step agreement and exact-sequence rate of ``[N, T, K]`` CTC outputs."""
    ref, out = _check(ref, out, "sequence")
    ra, oa = ref.argmax(-1), out.argmax(-1)
    active = (ra != blank) | (oa != blank)
    step = float((ra == oa)[active].mean()) if active.any() else 1.0
    rs, os_ = ctc_greedy_decode(ref, blank), ctc_greedy_decode(out, blank)
    exact = float(np.mean([a == b for a, b in zip(rs, os_)])) if rs else 1.0
    return {"step_agreement": step, "exact": exact}


def embedding_fidelity(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Mean per-sample cosine similarity and relative L2 error of ``[N, D]`` outputs."""
    ref, out = _check(ref, out, "embedding")
    ref, out = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    nr, no = np.linalg.norm(ref, axis=1), np.linalg.norm(out, axis=1)
    cos = (ref * out).sum(1) / np.maximum(nr * no, _EPS)
    cos[(nr < _EPS) & (no < _EPS)] = 1.0  # two zero vectors are the same vector
    total = np.linalg.norm(ref)
    diff = float(np.linalg.norm(out - ref))
    rel = diff / total if total > _EPS else (0.0 if diff <= _EPS else float("inf"))
    return {"cosine": float(cos.mean()) if len(cos) else 1.0, "rel_l2": float(rel)}


def head_fidelity(spec: HeadSpec, ref: Any, out: Any, threshold: float | None = None) -> dict[str, Any]:
    """The fidelity metrics of one output (raw, in the model's layout) of kind ``spec.kind``, with name and kind."""
    r, o = spec.canonical(np.asarray(ref)), spec.canonical(np.asarray(out))
    if spec.kind == "classify":
        m = classify_fidelity(r, o)
    elif spec.kind == "dense":
        m = dense_fidelity(r, o, spec.values, threshold)
    elif spec.kind == "sequence":
        m = sequence_fidelity(r, o, spec.blank)
    else:
        m = embedding_fidelity(r, o)
    return {"name": spec.name, "kind": spec.kind, **m}


def multi_fidelity(specs: Sequence[HeadSpec], refs: Sequence[Any], outs: Sequence[Any]) -> list[dict[str, Any]]:
    """:func:`head_fidelity` of every output (``refs``/``outs`` in output order)."""
    if not (len(specs) == len(refs) == len(outs)):
        raise ValidationError(f"fidelity: {len(specs)} heads but {len(refs)} original and {len(outs)} variant outputs")
    return [head_fidelity(s, r, o) for s, r, o in zip(specs, refs, outs)]
