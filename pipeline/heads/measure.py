"""Running ONNX variants for the heads: every output (not only the first), joined along each output's own batch
axis, the heads probed from a file, and the per-output entries :class:`~pipeline.heads.gate.Measurement` takes.

The stages call these so that every variant is measured the same way: :func:`probe_onnx_heads` once on the original
(baseline), :func:`onnx_outputs` on the original and each variant over the same inputs, then
:func:`output_entries` for each (fidelity against the original, and accuracy where labels exist).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.errors import ConfigError, InputError
from pipeline.heads.accuracy import label_accuracy
from pipeline.heads.fidelity import multi_fidelity
from pipeline.heads.kinds import HeadSpec, detect_heads
from pipeline.ort_session import make_session


def _session(path: str | Path | bytes) -> Any:
    """A one-thread session of a file, or of a serialised model this pipeline built (bytes)."""
    if isinstance(path, bytes):
        sess, label = make_session(path, threads=1), "the model"
    else:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"heads: model {p} does not exist")
        sess, label = make_session(p, threads=1), p.name
    if len(sess.get_inputs()) != 1:
        raise ConfigError(f"heads: {label} has {len(sess.get_inputs())} inputs; exactly one is supported")
    return sess


def _fixed_batch(sess: Any) -> int | None:
    dim0 = sess.get_inputs()[0].shape[0] if sess.get_inputs()[0].shape else None
    return int(dim0) if isinstance(dim0, int) and dim0 > 0 else None


def onnx_outputs(path: str | Path | bytes, x: np.ndarray, heads: Sequence[HeadSpec] | None = None,
                 batch: int = 64) -> list[np.ndarray]:
    """Every output of the model (a file, or serialised bytes) for ``x`` ``[N, C, H, W]``, run in batches and
    joined along each output's batch axis (``heads`` give it: axis 1 for ``TNK`` sequences; without heads, axis 0).
    A fixed-batch graph runs at its batch, the tail padded and cut off again."""
    sess = _session(path)
    name = sess.get_inputs()[0].name
    fixed = _fixed_batch(sess)
    step = fixed or max(1, int(batch))
    x = np.ascontiguousarray(x, dtype=np.float32)
    axes = [h.batch_axis for h in heads] if heads is not None else None
    parts: list[list[np.ndarray]] = []
    for i in range(0, len(x), step):
        xb = x[i:i + step]
        n = len(xb)
        if fixed and n < fixed:
            xb = np.concatenate([xb, np.zeros((fixed - n, *xb.shape[1:]), np.float32)])
        outs = sess.run(None, {name: xb})
        if axes is None:
            axes = [0] * len(outs)
        parts.append([np.take(o, np.arange(n), axis=a) for o, a in zip(outs, axes)])
    if not parts:
        raise ConfigError("heads: no input samples to run the model on")
    return [np.concatenate([p[j] for p in parts], axis=axes[j]) for j in range(len(parts[0]))]


def probe_onnx_heads(path: str | Path, x: np.ndarray, task: str | Sequence[str] = "auto",
                     blank: int = 0) -> list[HeadSpec]:
    """The heads of an ONNX model from its outputs on ``x[:1]`` and ``x[:2]`` (one probe for a fixed batch).

    ``x`` should be real inputs at the model's input shape: the value range (probability vs logit maps) is read
    from these outputs."""
    sess = _session(path)
    name = sess.get_inputs()[0].name
    h, w = int(x.shape[2]), int(x.shape[3])
    names = [o.name for o in sess.get_outputs()]
    fixed = _fixed_batch(sess)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if fixed is None and len(x) >= 2:
        a, b = sess.run(None, {name: x[:1]}), sess.run(None, {name: x[:2]})
        return detect_heads(a, 1, b, 2, names=names, task=task, input_hw=(h, w), blank=blank)
    n = fixed or 1
    xa = x[:n] if len(x) >= n else np.concatenate([x, np.zeros((n - len(x), *x.shape[1:]), np.float32)])
    return detect_heads(sess.run(None, {name: xa}), n, names=names, task=task, input_hw=(h, w), blank=blank)


def output_entries(heads: Sequence[HeadSpec], ref: Sequence[np.ndarray], out: Sequence[np.ndarray] | None = None,
                   labels: Sequence[Any] | Mapping[str, Any] | None = None,
                   ignore_index: int | None = None) -> tuple[dict[str, Any], ...]:
    """Per-output entries for a :class:`~pipeline.heads.gate.Measurement`.

    Args:
        heads: the model's heads (from the card).
        ref: the original's outputs.
        out: the variant's outputs (None: the entries of the original itself: name, kind, accuracy).
        labels: per output (in order, or by output name) the labels, None where that output has none.
        ignore_index: label-map value to leave out of dense scores.
    """
    outs = ref if out is None else out
    if isinstance(labels, Mapping):
        labels = [labels.get(h.name) for h in heads]
    labels = list(labels) if labels is not None else [None] * len(heads)
    if len(labels) != len(heads):
        raise ConfigError(f"heads: {len(labels)} label entries for {len(heads)} outputs; give one per output (None "
                          "where an output has no labels)")
    if out is None:
        entries = [{"name": h.name, "kind": h.kind} for h in heads]
    else:
        entries = multi_fidelity(heads, ref, out)
    for e, h, o, lab in zip(entries, heads, outs, labels):
        e["accuracy"] = None if lab is None else label_accuracy(h, o, lab, ignore_index)["accuracy"]
    return tuple(entries)
