"""What low rank can reach: the share of the original's MACs in layers no low-rank format rewrites, and the cap on
the MAC reduction that share sets (with a fraction ``f`` out of reach, MACs fall at most ``1/f`` x, however low
the ranks of everything else go).

Out of reach, from the original graph's compute nodes (:func:`benchmarks.energy.onnx_layer_stats`):

* depthwise and grouped convolutions (each filter sees one or a few channels: nothing to factorize);
* Conv / Gemm / MatMul whose second operand is not a constant weight (attention's activation x activation
  products): there is no weight to decompose;
* compute ops other than Conv / Gemm / MatMul (ConvTranspose, ...): no low-rank form is written for them.

Elementwise ops carry no MACs in this count. The section also carries the factorize stage's layer counts, among them
the layers the graph path's fidelity check moved to a higher rank or back to dense.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["REACHABLE_OPS", "reach_section", "reach_text"]

#: ops a low-rank format rewrites when their weight is a constant
REACHABLE_OPS = ("Conv", "Gemm", "MatMul")


def _why_out_of_reach(layer: Mapping[str, Any]) -> str | None:
    """Why low rank cannot touch ``layer`` (a layer of ``onnx_layer_stats``), or None when it can."""
    op = layer.get("op")
    if op not in REACHABLE_OPS:
        return f"{op} (no low-rank form)"
    if layer.get("weight_dtype") is None:
        return f"{op} without a constant weight"
    if op == "Conv" and int(layer.get("group", 1)) > 1:
        shape = layer.get("weight_shape") or [0, 0]
        return "depthwise conv" if len(shape) > 1 and int(shape[1]) == 1 else "grouped conv"
    return None


def reach_section(original_layers: Sequence[Mapping[str, Any]], factorize_metrics: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The report's ``reach`` section.

    Args:
        original_layers: ``onnx_layer_stats(original.onnx)["layers"]``.
        factorize_metrics: the factorize stage's metrics (layer counts; ``layers_fallen_back`` on the graph path).

    Returns:
        ``{"macs_total", "macs_out_of_reach", "out_of_reach_share", "max_mac_reduction" (None when nothing is out
        of reach), "layers_out_of_reach", "by_reason": {reason: {"layers", "macs"}}, "layers_factorized",
        "layers_total", "layers_fallen_back", "text"}``.
    """
    total = blocked = 0
    layers_blocked = 0
    by: dict[str, dict[str, int]] = {}
    for layer in original_layers:
        macs = int(layer.get("macs", 0))
        total += macs
        why = _why_out_of_reach(layer)
        if why is None:
            continue
        blocked += macs
        layers_blocked += 1
        entry = by.setdefault(why, {"layers": 0, "macs": 0})
        entry["layers"] += 1
        entry["macs"] += macs
    share = blocked / total if total else 0.0
    fm = dict(factorize_metrics or {})
    fact = int(fm.get("layers_factorized", 0))
    out = {
        "macs_total": int(total),
        "macs_out_of_reach": int(blocked),
        "out_of_reach_share": float(share),
        "max_mac_reduction": (1.0 / share) if share > 0 else None,
        "layers_out_of_reach": int(layers_blocked),
        "by_reason": dict(sorted(by.items(), key=lambda kv: -kv[1]["macs"])),
        "layers_factorized": fact,
        "layers_total": fact + int(fm.get("layers_dense", 0)),
        "layers_fallen_back": int(fm.get("layers_fallen_back", 0)),
    }
    out["text"] = reach_text(out)
    return out


def reach_text(reach: Mapping[str, Any]) -> str:
    """One paragraph for the top of the Markdown/HTML reports."""
    share = float(reach["out_of_reach_share"])
    if reach["macs_out_of_reach"]:
        parts = ", ".join(f"{why}: {v['layers']} layer{'s' if v['layers'] != 1 else ''}, {v['macs'] / 1e6:.2f} MMAC"
                          for why, v in reach["by_reason"].items())
        cap = reach["max_mac_reduction"]
        head = (f"{100 * share:.1f}% of the original's {reach['macs_total'] / 1e6:.2f} MMAC sit in layers low rank "
                f"cannot touch ({parts}): factorization can cut MACs at most {cap:.2f}x" if math.isfinite(cap)
                else "")
    else:
        head = (f"every one of the original's {reach['macs_total'] / 1e6:.2f} MMAC is in layers low rank can "
                "rewrite (no cap on the MAC reduction from the model's structure)")
    tail = f"{reach['layers_factorized']}/{reach['layers_total']} layers factorized"
    if reach.get("layers_fallen_back"):
        tail += (f"; {reach['layers_fallen_back']} fell back to a higher rank or dense to keep the output fidelity "
                 "(see the layer table)")
    return f"Reach: {head}. {tail}."
