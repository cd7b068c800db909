"""``report.html``: self-contained HTML (inline CSS, plots as ``data:`` PNGs, no external references), so it opens
offline and leaks nothing when shared."""
from __future__ import annotations

import html

from benchmarks.report.plots import plots
from benchmarks.report.tables import (fmt, headline_text, layer_table, mobile_note, mobile_table, roofline_table,
                                     search_table, search_text, variant_rows, weight_bits_text)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}h1{font-size:1.6em}img{max-width:100%}
.note{color:#555;font-size:13px}"""


def _html_table(cols: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict) -> str:
    """Self-contained HTML: inline CSS, plots as ``data:image/png;base64`` images, no external references."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{e(report['model'])} on {e(report['dataset'])}: lowrank-deploy report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(headline_text(report))}</h1>",
        *([f"<p><strong>{e(report['reach']['text'])}</strong></p>"] if report.get("reach") else []),
        f"<p>Model <code>{e(report['model'])}</code> on <code>{e(report['dataset'])}</code>.</p>",
    ]
    if report["headline"].get("basis"):
        parts.append(f"<p class=\"note\">Basis: {e(str(report['headline']['basis']))}.</p>")
    for note in report.get("notes") or []:
        parts.append(f"<p><strong>Note.</strong> {e(note)}</p>")
    parts.append("<h2>Variants</h2>" + _html_table(*variant_rows(report)))
    parts.append("<p class=\"note\">Latency measured with ONNX Runtime in one run (sessions warmed, variants "
                 "interleaved); energy is a proxy from the Horowitz 45 nm table and the target's device profile.</p>")
    for title, b64 in plots(report):
        parts.append(f"<h2>{e(title)}</h2><img alt=\"{e(title)}\" src=\"data:image/png;base64,{b64}\">")
    roof = roofline_table(report)
    if roof:
        parts.append("<h2>Roofline estimates</h2>" + _html_table(*roof)
                     + "<p class=\"note\">Lower bounds from the device profiles' peak MAC/s and DRAM bandwidth; "
                       "per-node overhead is not modelled.</p>")
    parts.append("<h2>Container</h2>" + _html_table(
        ["key", "value"], [[k, fmt(v)] for k, v in report["container"].items() if not isinstance(v, (dict, list))]))
    wb = weight_bits_text((report.get("quantize") or {}).get("weight_bits"))
    if wb:
        parts.append(f"<p>{e(wb)}</p>")
    mobile = report.get("mobile")
    mob = mobile_table(mobile)
    if mob:
        parts.append("<h2>Mobile usability (per shipped file)</h2>" + _html_table(*mob)
                     + f"<p class=\"note\">{e(mobile_note(mobile))}</p>")
    if report.get("search"):
        parts.append(f"<h2>Rank search</h2><p>{e(search_text(report['search']))}</p>"
                     + _html_table(*search_table(report["search"])))
    if report.get("layers"):
        parts.append("<h2>Layers (factorization)</h2>" + _html_table(*layer_table(report["layers"])))
    parts.append("<h2>Settings</h2>" + _html_table(["setting", "value"], [[k, fmt(v)] for k, v in report["settings"].items()]))
    if report.get("stages"):
        parts.append("<h2>Stages</h2>" + _html_table(*layer_table(report["stages"])))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
