"""The run's report: ``report.json`` (schema version 1), ``report.md`` and a self-contained ``report.html``.

The HTML embeds its plots as base64 PNGs (matplotlib, Agg backend) and references nothing outside itself: no
external CSS, scripts, fonts or images, so it opens offline and leaks nothing when shared.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import atomic_write_json, atomic_write_text
from pipeline.errors import ValidationError

SCHEMA_VERSION = 1
_PERCENTILES = ("p50", "p90", "p99")


# ----------------------------------------------------------------------------------------------- validation
def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Checker:
    """Collects every schema violation with its JSON path, so one run reports them all."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def need(self, obj: dict, key: str, path: str, pred: Callable[[Any], bool], what: str, optional: bool = False) -> Any:
        if key not in obj:
            if not optional:
                self.errors.append(f"{path}.{key}: missing ({what})")
            return None
        v = obj[key]
        if not pred(v):
            self.errors.append(f"{path}.{key}: expected {what}, got {v!r:.80}")
            return None
        return v


def validate_report(report: dict) -> None:
    """Check a report dict against schema version 1.

    Required: ``schema_version == 1``; ``model``, ``dataset`` (str); ``settings`` (dict); ``headline`` with positive
    ``smaller``/``faster`` and ``acc_from``/``acc_to`` in [0, 1] or null; a non-empty ``variants`` list of uniquely
    named variants each with ``accuracy`` in [0, 1] or null, ``size_bytes`` > 0, ``macs``/``params`` >= 0 (ints),
    ``latency_ms`` with finite ``p50 <= p90 <= p99`` > 0, ``file`` (str), optional ``energy`` (dict); ``container``
    with ``file`` and ``size_bytes`` > 0. Optional: ``layers``/``stages`` (lists of dicts), ``node_profile``
    (list or dict), ``mobile`` (dict), ``notes`` (list of strings: what the numbers mean, e.g. pseudo-labels).

    Args:
        report: the report.

    Raises:
        ValidationError: listing every violation with its path.
    """
    c = _Checker()
    if not isinstance(report, dict):
        raise ValidationError(f"report: expected a JSON object, got {type(report).__name__}")
    r = "report"
    c.need(report, "schema_version", r, lambda v: v == SCHEMA_VERSION, f"schema version {SCHEMA_VERSION}")
    c.need(report, "model", r, lambda v: isinstance(v, str) and bool(v), "non-empty string")
    c.need(report, "dataset", r, lambda v: isinstance(v, str) and bool(v), "non-empty string")
    c.need(report, "settings", r, lambda v: isinstance(v, dict), "object")
    acc_ok = lambda v: v is None or (_is_num(v) and 0.0 <= v <= 1.0)  # noqa: E731
    head = c.need(report, "headline", r, lambda v: isinstance(v, dict), "object")
    if head is not None:
        for k in ("smaller", "faster"):
            c.need(head, k, f"{r}.headline", lambda v: _is_num(v) and v > 0, "positive number")
        for k in ("acc_from", "acc_to"):
            c.need(head, k, f"{r}.headline", acc_ok, "accuracy in [0, 1] or null")
    variants = c.need(report, "variants", r, lambda v: isinstance(v, list) and len(v) > 0, "non-empty list")
    names: set[str] = set()
    for i, v in enumerate(variants or []):
        p = f"{r}.variants[{i}]"
        if not isinstance(v, dict):
            c.errors.append(f"{p}: expected object")
            continue
        name = c.need(v, "name", p, lambda x: isinstance(x, str) and bool(x), "non-empty string")
        if name is not None:
            if name in names:
                c.errors.append(f"{p}.name: duplicate variant name {name!r}")
            names.add(name)
        c.need(v, "accuracy", p, acc_ok, "accuracy in [0, 1] or null")
        c.need(v, "size_bytes", p, lambda x: _is_int(x) and x > 0, "positive integer")
        c.need(v, "macs", p, lambda x: _is_int(x) and x >= 0, "integer >= 0")
        c.need(v, "params", p, lambda x: _is_int(x) and x >= 0, "integer >= 0")
        c.need(v, "file", p, lambda x: isinstance(x, str), "string")
        c.need(v, "energy", p, lambda x: isinstance(x, dict), "object", optional=True)
        lat = c.need(v, "latency_ms", p, lambda x: isinstance(x, dict), "object")
        if lat is not None:
            vals = [c.need(lat, k, f"{p}.latency_ms", lambda x: _is_num(x) and x > 0, "positive number") for k in _PERCENTILES]
            if all(x is not None for x in vals) and not (vals[0] <= vals[1] <= vals[2]):
                c.errors.append(f"{p}.latency_ms: percentiles out of order (p50 {vals[0]}, p90 {vals[1]}, p99 {vals[2]})")
    cont = c.need(report, "container", r, lambda v: isinstance(v, dict), "object")
    if cont is not None:
        c.need(cont, "file", f"{r}.container", lambda v: isinstance(v, str) and bool(v), "non-empty string")
        c.need(cont, "size_bytes", f"{r}.container", lambda v: _is_int(v) and v > 0, "positive integer")
    is_rows = lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v)  # noqa: E731
    c.need(report, "layers", r, is_rows, "list of objects", optional=True)
    c.need(report, "stages", r, is_rows, "list of objects", optional=True)
    c.need(report, "node_profile", r, lambda v: isinstance(v, dict) or is_rows(v), "object or list of objects", optional=True)
    c.need(report, "mobile", r, lambda v: isinstance(v, dict), "object", optional=True)
    c.need(report, "notes", r, lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
           "list of strings", optional=True)
    if c.errors:
        raise ValidationError(f"report does not match schema version {SCHEMA_VERSION} ({len(c.errors)} problem(s)):\n  - "
                              + "\n  - ".join(c.errors))


# ----------------------------------------------------------------------------------------------- formatting
def _size(n: Any) -> str:
    if not _is_num(n):
        return "-"
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{int(n)} B"


def _count(n: Any) -> str:
    if not _is_num(n):
        return "-"
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= f:
            return f"{n / f:.2f}{unit}"
    return str(int(n))


def _pct(a: Any) -> str:
    return f"{100 * a:.2f}%" if _is_num(a) else "n/a"


def _ms(v: Any) -> str:
    return f"{v:.3f}" if _is_num(v) else "-"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else ", ".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def headline_text(report: dict) -> str:
    """``"N x smaller, M x faster, accuracy a% -> b%"``: the first line of the Markdown report."""
    h = report["headline"]
    return (f"{h['smaller']:.1f}x smaller, {h['faster']:.2f}x faster, "
            f"accuracy {_pct(h.get('acc_from'))} -> {_pct(h.get('acc_to'))}")


def _variant_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["variant", "accuracy", "size", "p50 ms", "p90 ms", "p99 ms", "MACs", "params", "energy uJ (proxy)"]
    rows = []
    for v in report["variants"]:
        lat = v.get("latency_ms", {})
        e = v.get("energy") or {}
        rows.append([v["name"], _pct(v.get("accuracy")), _size(v.get("size_bytes")), _ms(lat.get("p50")),
                     _ms(lat.get("p90")), _ms(lat.get("p99")), _count(v.get("macs")), _count(v.get("params")),
                     f"{e['energy_uj']:.3g}" if _is_num(e.get("energy_uj")) else "-"])
    return cols, rows


_LAYER_COLS = ("name", "kind", "status", "format", "ranks", "shape", "stride", "macs_before", "macs_after",
               "params_before", "params_after", "rel_error", "latency_ms", "reason")


def _layer_table(layers: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Columns: the usual factorization keys first (in a readable order), then any others in first-seen order."""
    seen: list[str] = []
    for row in layers:
        for k, v in row.items():
            if k not in seen and not isinstance(v, dict):
                seen.append(k)
    cols = [c for c in _LAYER_COLS if c in seen and c != "reason"] + [c for c in seen if c not in _LAYER_COLS]
    if "reason" in seen:
        cols.append("reason")  # long free text reads best as the last column
    return cols, [[_fmt(row.get(k)) for k in cols] for row in layers]


def _attribute(module: str, known: list[str]) -> str:
    """Map a profiled module path to a factorization layer name.

    ``features.4.0.1`` (a node of the factorized Sequential that replaced ``features.4.0``) -> ``features.4.0``;
    a fused Conv+BN+ReLU node that ORT names after the ReLU (``features.2.2``) -> the one conv layer of the same
    block (``features.2.0``), but only when that sibling is unique: a ResNet block with two convs stays unmapped.
    """
    best = ""
    for k in known:
        if (module == k or module.startswith(k + ".")) and len(k) > len(best):
            best = k
    if best:
        return best
    parent = module.rsplit(".", 1)[0] if "." in module else None
    siblings = [k for k in known if parent and k.rsplit(".", 1)[0] == parent and k.count(".") == module.count(".")]
    return siblings[0] if len(siblings) == 1 else module


def _profile_rows(node_profile: Any, layers: Any = None) -> list[dict]:
    """Per-layer times (ms per run) from ``profile_nodes`` rows, grouped by factorization layer names when known."""
    if not isinstance(node_profile, list):
        return []
    known = [str(l["name"]) for l in layers or [] if isinstance(l, dict) and l.get("name")]
    agg: dict[str, float] = {}
    for r in node_profile:
        if not isinstance(r, dict):
            continue
        layer = str(r.get("layer") or r.get("node") or "?")
        if known:
            layer = _attribute(layer, known)
        if _is_num(r.get("mean_ms")):
            t = float(r["mean_ms"])
        elif _is_num(r.get("mean_us")):
            t = float(r["mean_us"]) / 1e3
        else:
            continue
        agg[layer] = agg.get(layer, 0.0) + t
    return [{"layer": k, "ms": v} for k, v in sorted(agg.items(), key=lambda kv: -kv[1])]


def _roofline_table(report: dict) -> tuple[list[str], list[list[str]]] | None:
    """Measured p50 next to roofline lower bounds: the target profile's (from ``energy``) and, when a variant carries
    ``roofline`` (``energy.roofline_all`` output), every device profile's."""
    profiles: list[str] = []
    for v in report["variants"]:
        for name in (v.get("roofline") or {}):
            if name not in profiles:
                profiles.append(name)
    have_energy = any(isinstance((v.get("energy") or {}).get("roofline"), dict) for v in report["variants"])
    if not profiles and not have_energy:
        return None
    cols = ["variant", "measured p50 ms"] + (["roofline ms (target profile)"] if have_energy else [])
    cols += [f"roofline ms {p}" for p in profiles]
    rows = []
    for v in report["variants"]:
        roof = (v.get("energy") or {}).get("roofline") or {}
        row = [v["name"], _ms(v.get("latency_ms", {}).get("p50"))]
        if have_energy:
            row.append(f"{roof['latency_ms']:.4g}" if _is_num(roof.get("latency_ms")) else "-")
        for p in profiles:
            r = (v.get("roofline") or {}).get(p) or {}
            row.append(f"{r['latency_ms']:.4g}" if _is_num(r.get("latency_ms")) else "-")
        rows.append(row)
    return cols, rows


def _md_table(cols: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(esc(x) for x in r) + " |" for r in rows]
    return out


def render_markdown(report: dict) -> str:
    """Markdown report: headline first, then variants, container, mobile, layer table, node profile, settings."""
    lines = [f"# {headline_text(report)}", ""]
    lines.append(f"Model `{report['model']}` on `{report['dataset']}`.")
    basis = report["headline"].get("basis")
    if basis:
        lines.append(f"Basis: {basis}.")
    for note in report.get("notes") or []:
        lines.append(f"\n**Note.** {note}")
    lines += ["", "## Variants", ""]
    lines += _md_table(*_variant_rows(report))
    lines.append("")
    lines.append("Latency: ONNX Runtime, sessions created and warmed first, variants timed interleaved; "
                 "energy is a proxy (see settings), not a measurement.")
    roof = _roofline_table(report)
    if roof:
        lines += ["", "## Roofline estimates (lower bounds from peak MAC/s and DRAM bandwidth)", ""]
        lines += _md_table(*roof)
    cont = report["container"]
    lines += ["", "## Container", ""]
    lines += _md_table(["key", "value"], [[k, _fmt(v)] for k, v in cont.items() if not isinstance(v, (dict, list))])
    mobile = report.get("mobile")
    if isinstance(mobile, dict) and isinstance(mobile.get("summary"), dict) and mobile["summary"]:
        lines += ["", "## Mobile (ONNX Runtime usability checker)", ""]
        rows = []
        for ep, s in mobile["summary"].items():
            if isinstance(s, dict):
                rows.append([ep, _fmt(s.get("supported_pct_fixed_shapes")), _fmt(s.get("unsupported_ops") or "-")])
        lines += _md_table(["EP", "% nodes supported (fixed input shape)", "unsupported ops"], rows)
    if mobile and isinstance(mobile, dict) and mobile.get("error"):
        lines.append(f"\nMobile check error: {mobile['error']}")
    layers = report.get("layers")
    if layers:
        lines += ["", "## Layers (factorization)", ""]
        lines += _md_table(*_layer_table(layers))
    prof = _profile_rows(report.get("node_profile"), report.get("layers"))
    if prof:
        lines += ["", "## Per-layer latency (ORT profiler, decomposed fp32 model)", ""]
        lines += _md_table(["layer", "ms per run"], [[r["layer"], f"{r['ms']:.4f}"] for r in prof[:30]])
    lines += ["", "## Settings", ""]
    lines += _md_table(["setting", "value"], [[k, _fmt(v)] for k, v in report["settings"].items()])
    stages = report.get("stages")
    if stages:
        lines += ["", "## Stages", ""]
        lines += _md_table(*_layer_table(stages))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- plots
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    # No "Software" metadata: the PNG then carries no URL either.
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by any other (lower x is better, higher y is better), sorted by x."""
    front = []
    best = -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _scatter(variants: list[dict], xkey: Callable[[dict], Any], xlabel: str, title: str, logx: bool) -> str | None:
    import matplotlib.pyplot as plt

    pts = [(xkey(v), v.get("accuracy"), v["name"]) for v in variants]
    pts = [(x, y, n) for x, y, n in pts if _is_num(x) and _is_num(y) and x > 0]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], color="tab:blue", zorder=3)
    for x, y, n in pts:
        ax.annotate(n, (x, 100 * y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    front = _pareto([(x, y) for x, y, _ in pts])
    ax.step([p[0] for p in front], [100 * p[1] for p in front], where="post", color="tab:orange", label="Pareto front")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.2)  # room for the labels next to the points
    ax.legend(loc="best")
    return _png(fig)


def _plots(report: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    variants = report["variants"]
    p = _scatter(variants, lambda v: v.get("latency_ms", {}).get("p50"), "p50 latency (ms)", "Accuracy vs latency", False)
    if p:
        out.append(("Accuracy vs latency (p50)", p))
    p = _scatter(variants, lambda v: v.get("size_bytes"), "size (bytes, log scale)", "Accuracy vs size", True)
    if p:
        out.append(("Accuracy vs size", p))
    prof = _profile_rows(report.get("node_profile"), report.get("layers"))[:25]
    if prof:
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(prof) + 1)))
        ax.barh([r["layer"] for r in prof][::-1], [r["ms"] for r in prof][::-1], color="tab:green")
        ax.set_xlabel("ms per run (ORT profiler)")
        ax.set_title("Per-layer latency")
        ax.grid(True, axis="x", alpha=0.3)
        out.append(("Per-layer latency", _png(fig)))
    energy = [(v["name"], v["energy"]) for v in variants if isinstance(v.get("energy"), dict)
              and isinstance(v["energy"].get("breakdown_uj"), dict)]
    if energy:
        fig, ax = plt.subplots(figsize=(6, 4))
        bottom = [0.0] * len(energy)
        for part, color in (("compute", "tab:blue"), ("sram", "tab:cyan"), ("dram", "tab:red")):
            vals = [float(e["breakdown_uj"].get(part, 0.0)) for _, e in energy]
            ax.bar([n for n, _ in energy], vals, bottom=bottom, label=part, color=color)
            bottom = [b + x for b, x in zip(bottom, vals)]
        ax.set_ylabel("energy per inference (uJ, proxy)")
        ax.set_title("Energy breakdown (Horowitz 45 nm proxy)")
        ax.legend()
        out.append(("Energy breakdown (proxy)", _png(fig)))
    return out


# ----------------------------------------------------------------------------------------------- HTML
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
        f"<p>Model <code>{e(report['model'])}</code> on <code>{e(report['dataset'])}</code>.</p>",
    ]
    if report["headline"].get("basis"):
        parts.append(f"<p class=\"note\">Basis: {e(str(report['headline']['basis']))}.</p>")
    for note in report.get("notes") or []:
        parts.append(f"<p><strong>Note.</strong> {e(note)}</p>")
    parts.append("<h2>Variants</h2>" + _html_table(*_variant_rows(report)))
    parts.append("<p class=\"note\">Latency measured with ONNX Runtime in one run (sessions warmed, variants "
                 "interleaved); energy is a proxy from the Horowitz 45 nm table and the target's device profile.</p>")
    for title, b64 in _plots(report):
        parts.append(f"<h2>{e(title)}</h2><img alt=\"{e(title)}\" src=\"data:image/png;base64,{b64}\">")
    roof = _roofline_table(report)
    if roof:
        parts.append("<h2>Roofline estimates</h2>" + _html_table(*roof)
                     + "<p class=\"note\">Lower bounds from the device profiles' peak MAC/s and DRAM bandwidth; "
                       "per-node overhead is not modelled.</p>")
    parts.append("<h2>Container</h2>" + _html_table(
        ["key", "value"], [[k, _fmt(v)] for k, v in report["container"].items() if not isinstance(v, (dict, list))]))
    mobile = report.get("mobile")
    if isinstance(mobile, dict) and isinstance(mobile.get("summary"), dict) and mobile["summary"]:
        rows = [[ep, _fmt(s.get("supported_pct_fixed_shapes")), _fmt(s.get("unsupported_ops") or "-")]
                for ep, s in mobile["summary"].items() if isinstance(s, dict)]
        parts.append("<h2>Mobile usability</h2>" + _html_table(["EP", "% nodes supported (fixed input shape)",
                                                                 "unsupported ops"], rows))
    if report.get("layers"):
        parts.append("<h2>Layers (factorization)</h2>" + _html_table(*_layer_table(report["layers"])))
    parts.append("<h2>Settings</h2>" + _html_table(["setting", "value"], [[k, _fmt(v)] for k, v in report["settings"].items()]))
    if report.get("stages"):
        parts.append("<h2>Stages</h2>" + _html_table(*_layer_table(report["stages"])))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(report: dict, out_dir: str | Path, html: bool = True) -> dict[str, Path]:
    """Validate ``report`` and write ``report.json``, ``report.md`` and (optionally) ``report.html`` atomically.

    Nothing is written when the report does not validate.

    Args:
        report: the report dict (schema version 1).
        out_dir: destination folder.
        html: also write the HTML report with plots.

    Returns:
        ``{"json": path, "md": path, "html": path}`` (``html`` only when written).

    Raises:
        ValidationError: the report does not match the schema.
    """
    validate_report(report)
    out = Path(out_dir)
    md = render_markdown(report)
    page = render_html(report) if html else None
    paths = {"json": atomic_write_json(out / "report.json", report), "md": atomic_write_text(out / "report.md", md)}
    if page is not None:
        paths["html"] = atomic_write_text(out / "report.html", page)
    return paths
