"""The benchmark's fidelity gate: every variant's outputs measured against the original's, per head, then
``benchmark.max_drop`` applied to every variant that could ship; the fastest one that passes ships and the
headline names it (never "faster" for a slower model). When none passes, :class:`FidelityGateError` stops the run
(exit code 2) before anything is published.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.card import ModelCard
from pipeline.data.core import label_kind
from pipeline.heads.gate import FidelityGateError, GateCriteria, GateResult, Measurement, gate_variants
from pipeline.heads.kinds import HeadSpec
from pipeline.heads.measure import onnx_outputs, output_entries

__all__ = ["CANDIDATES", "FidelityGateError", "apply_gate", "labelled_head", "measure_fidelity", "model_heads",
           "onnx_fidelity"]

#: the variants that can ship (the fp32 decomposed model, the int8 model, the container's rebuild)
CANDIDATES = ("finetuned", "int8", "unpacked")


def model_heads(card: ModelCard) -> list[HeadSpec]:
    """The card's heads; a classifier card from before heads (or a zoo model) is one ``NK`` logits output."""
    heads = [HeadSpec.from_dict(h) for h in card.heads]
    return heads or [HeadSpec(name="logits", kind="classify", layout="NK", num_classes=int(card.num_classes))]


#: the output kind each kind of label array scores (pipeline.data.core.label_kind)
_LABELLED_KIND = {"class": "classify", "map": "dense", "sequence": "sequence"}


def labelled_head(heads: Sequence[HeadSpec], y: np.ndarray | None) -> int | None:
    """Index of the output the labels score: class indices the first classify output, label maps the first dense
    one, label sequences the first sequence one; None when unlabelled or no output is of that kind."""
    want = _LABELLED_KIND.get(label_kind(y) or "")
    return next((i for i, h in enumerate(heads) if h.kind == want), None)


def _labels(heads: Sequence[HeadSpec], y: np.ndarray | None) -> list[Any]:
    """The labels go to the output they score (:func:`labelled_head`); every other output has none."""
    first = labelled_head(heads, y)
    return [y if (y is not None and i == first) else None for i in range(len(heads))]


def _plain(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in e.items()} for e in entries]


def onnx_fidelity(card: ModelCard, original: Path, variant: Path, x: np.ndarray) -> list[dict[str, Any]]:
    """Per-head fidelity of ``variant`` against ``original`` on ``x`` (no labels)."""
    heads = model_heads(card)
    ref = onnx_outputs(original, x, heads)
    return _plain(output_entries(heads, ref, onnx_outputs(variant, x, heads)))


def measure_fidelity(card: ModelCard, files: Mapping[str, Path], x: np.ndarray,
                     y: np.ndarray | None) -> dict[str, list[dict[str, Any]]]:
    """``{variant: per-output entries}`` (fidelity against ``files["original"]`` plus label accuracy where the data
    have labels); the original's own entries hold name, kind and accuracy."""
    heads = model_heads(card)
    labels = _labels(heads, y)
    ref = onnx_outputs(files["original"], x, heads)
    out = {"original": _plain(output_entries(heads, ref, None, labels))}
    for name, path in files.items():
        if name != "original":
            out[name] = _plain(output_entries(heads, ref, onnx_outputs(path, x, heads), labels))
    return out


def apply_gate(max_drop: float, target: str, variants: Sequence[Mapping[str, Any]],
               entries: Mapping[str, Sequence[Mapping[str, Any]]], samples: Mapping[str, Sequence[float]],
               chunk: int) -> GateResult:
    """Gate the :data:`CANDIDATES` among ``variants`` (report rows) against the original.

    Args:
        max_drop: allowed drop as a fraction (0.01 = one accuracy point; agreement floors follow it).
        target: the benchmark target name.
        variants: the report's variant rows (``name``, ``file``, ``size_bytes``, ``latency_ms.p50``).
        entries: :func:`measure_fidelity`'s result.
        samples: raw interleaved latency samples (ms) per variant name (``unpacked`` uses int8's).
        chunk: the timing loop's run length (consecutive samples are resampled together).

    Raises:
        FidelityGateError: no candidate passes (each one's failing checks named).
    """
    def measurement(v: Mapping[str, Any]) -> Measurement:
        label = {"finetuned": "fp32 decomposed", "int8": "int8", "unpacked": "int8 from the container"}
        key = "int8" if v["name"] == "unpacked" else v["name"]
        return Measurement(name=v["name"], file=str(v["file"]), size_bytes=int(v["size_bytes"]),
                           p50_ms=float(v["latency_ms"]["p50"]), outputs=tuple(entries[v["name"]]), target=target,
                           samples_ms=tuple(samples.get(key, ())), label=label.get(v["name"], v["name"]))

    by = {v["name"]: v for v in variants}
    criteria = GateCriteria(max_drop=100.0 * float(max_drop), block=int(chunk))
    cands = [measurement(by[n]) for n in CANDIDATES if n in by]
    return gate_variants(measurement(by["original"]), cands, criteria)
