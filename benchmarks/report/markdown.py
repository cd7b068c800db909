"""``report.md``: the run's report as Markdown (headline first)."""
from __future__ import annotations

from benchmarks.report.tables import (fmt, headline_text, layer_table, mobile_note, mobile_table, profile_rows,
                                     roofline_table, search_table, search_text, variant_rows,
                                     weight_bits_text)


def _md_table(cols: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(esc(x) for x in r) + " |" for r in rows]
    return out


def render_markdown(report: dict) -> str:
    """Markdown report: headline first, then variants, container, mobile, layer table, node profile, settings."""
    lines = [f"# {headline_text(report)}", ""]
    reach = report.get("reach")
    if reach:
        lines += [f"**{reach['text']}**", ""]
    lines.append(f"Model `{report['model']}` on `{report['dataset']}`.")
    basis = report["headline"].get("basis")
    if basis:
        lines.append(f"Basis: {basis}.")
    for note in report.get("notes") or []:
        lines.append(f"\n**Note.** {note}")
    lines += ["", "## Variants", ""]
    lines += _md_table(*variant_rows(report))
    lines.append("")
    lines.append("Latency: ONNX Runtime, sessions created and warmed first, variants timed interleaved; "
                 "energy is a proxy (see settings), not a measurement.")
    roof = roofline_table(report)
    if roof:
        lines += ["", "## Roofline estimates (lower bounds from peak MAC/s and DRAM bandwidth)", ""]
        lines += _md_table(*roof)
    cont = report["container"]
    lines += ["", "## Container", ""]
    lines += _md_table(["key", "value"], [[k, fmt(v)] for k, v in cont.items() if not isinstance(v, (dict, list))])
    wb = weight_bits_text((report.get("quantize") or {}).get("weight_bits"))
    if wb:
        lines += ["", wb]
    mobile = report.get("mobile")
    mob = mobile_table(mobile)
    if mob:
        lines += ["", "## Mobile (ONNX Runtime usability checker, per shipped file)", ""]
        lines += _md_table(*mob)
        lines += ["", mobile_note(mobile)]
    if mobile and isinstance(mobile, dict) and mobile.get("error"):
        lines.append(f"\nMobile check error: {mobile['error']}")
    search = report.get("search")
    if search:
        lines += ["", "## Rank search", "", search_text(search), ""]
        lines += _md_table(*search_table(search))
    layers = report.get("layers")
    if layers:
        lines += ["", "## Layers (factorization)", ""]
        lines += _md_table(*layer_table(layers))
    prof = profile_rows(report.get("node_profile"), report.get("layers"))
    if prof:
        lines += ["", "## Per-layer latency (ORT profiler, decomposed fp32 model)", ""]
        lines += _md_table(["layer", "ms per run"], [[r["layer"], f"{r['ms']:.4f}"] for r in prof[:30]])
    lines += ["", "## Settings", ""]
    lines += _md_table(["setting", "value"], [[k, fmt(v)] for k, v in report["settings"].items()])
    stages = report.get("stages")
    if stages:
        lines += ["", "## Stages", ""]
        lines += _md_table(*layer_table(stages))
    return "\n".join(lines) + "\n"
