"""The report's tables as rows of strings (shared by the Markdown and HTML renderings and the plots): value
formatting, the variant / layer / roofline tables, per-layer profile times grouped by factorization layer."""
from __future__ import annotations

from typing import Any

from benchmarks.report.schema import is_num


def _size(n: Any) -> str:
    if not is_num(n):
        return "-"
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{int(n)} B"


def _count(n: Any) -> str:
    if not is_num(n):
        return "-"
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= f:
            return f"{n / f:.2f}{unit}"
    return str(int(n))


def _pct(a: Any) -> str:
    return f"{100 * a:.2f}%" if is_num(a) else "n/a"


def _ms(v: Any) -> str:
    return f"{v:.3f}" if is_num(v) else "-"


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else ", ".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def headline_text(report: dict) -> str:
    """``"N x smaller, M x faster, accuracy a% -> b%"``: the first line of the Markdown report."""
    h = report["headline"]
    if h.get("text"):  # the fidelity gate's line: names the shipped variant, never "faster" for a slower one
        return str(h["text"])
    return (f"{h['smaller']:.1f}x smaller, {h['faster']:.2f}x faster, "
            f"accuracy {_pct(h.get('acc_from'))} -> {_pct(h.get('acc_to'))}")


def variant_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["variant", "accuracy", "size", "p50 ms", "p90 ms", "p99 ms", "MACs", "params", "energy uJ (proxy)"]
    rows = []
    for v in report["variants"]:
        lat = v.get("latency_ms", {})
        e = v.get("energy") or {}
        rows.append([v["name"], _pct(v.get("accuracy")), _size(v.get("size_bytes")), _ms(lat.get("p50")),
                     _ms(lat.get("p90")), _ms(lat.get("p99")), _count(v.get("macs")), _count(v.get("params")),
                     f"{e['energy_uj']:.3g}" if is_num(e.get("energy_uj")) else "-"])
    return cols, rows


_LAYER_COLS = ("name", "kind", "status", "format", "ranks", "shape", "stride", "macs_before", "macs_after",
               "params_before", "params_after", "rel_error", "latency_ms", "reason")


def layer_table(layers: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Columns: the usual factorization keys first (in a readable order), then any others in first-seen order."""
    seen: list[str] = []
    for row in layers:
        for k, v in row.items():
            if k not in seen and not isinstance(v, dict):
                seen.append(k)
    cols = [c for c in _LAYER_COLS if c in seen and c != "reason"] + [c for c in seen if c not in _LAYER_COLS]
    if "reason" in seen:
        cols.append("reason")  # long free text reads best as the last column
    return cols, [[fmt(row.get(k)) for k in cols] for row in layers]


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


def profile_rows(node_profile: Any, layers: Any = None) -> list[dict]:
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
        if is_num(r.get("mean_ms")):
            t = float(r["mean_ms"])
        elif is_num(r.get("mean_us")):
            t = float(r["mean_us"]) / 1e3
        else:
            continue
        agg[layer] = agg.get(layer, 0.0) + t
    return [{"layer": k, "ms": v} for k, v in sorted(agg.items(), key=lambda kv: -kv[1])]


def roofline_table(report: dict) -> tuple[list[str], list[list[str]]] | None:
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
            row.append(f"{roof['latency_ms']:.4g}" if is_num(roof.get("latency_ms")) else "-")
        for p in profiles:
            r = (v.get("roofline") or {}).get(p) or {}
            row.append(f"{r['latency_ms']:.4g}" if is_num(r.get("latency_ms")) else "-")
        rows.append(row)
    return cols, rows


MOBILE_COLS = ["file", "EP", "% nodes (as is)", "% nodes (fixed shapes)", "partitions", "verdict (as is)",
               "unsupported ops"]


def mobile_table(mobile: Any) -> tuple[list[str], list[list[str]]] | None:
    """One row per shipped ``.ort`` file and EP from ``mobile.json`` (the checker ran on the graph that file
    stores), so each row names the file it describes; None when the report has no mobile section."""
    if not isinstance(mobile, dict) or not isinstance(mobile.get("ort"), dict) or not mobile["ort"]:
        return None
    rows = []
    for name in sorted(mobile["ort"]):
        entry = mobile["ort"][name] if isinstance(mobile["ort"][name], dict) else {}
        usability = entry.get("usability") if isinstance(entry.get("usability"), dict) else {}
        if not usability:
            rows.append([name, "-", "-", "-", "-", "-", fmt(entry.get("usability_error") or "not checked")])
        for ep in sorted(usability):
            s = usability[ep] if isinstance(usability[ep], dict) else {}
            as_is = s.get("as_is") if isinstance(s.get("as_is"), dict) else {}
            rows.append([name, ep, fmt(as_is.get("supported_pct")), fmt(s.get("supported_pct_fixed_shapes")),
                         fmt(as_is.get("partitions")), fmt(s.get("verdict_as_is")),
                         fmt(s.get("unsupported_ops") or "-")])
    return MOBILE_COLS, rows


def mobile_note(mobile: Any) -> str:
    """The line under the mobile table: target, optimization style, the session option Runtime-style files need."""
    if not isinstance(mobile, dict):
        return ""
    opts = sorted({f"{k}={v}" for e in (mobile.get("ort") or {}).values() if isinstance(e, dict)
                   for k, v in (e.get("session_config") or {}).items()})
    note = (f"Mobile target {mobile.get('target')}: {mobile.get('style')}-style .ort files; ONNX Runtime's usability "
            f"checker ran on the graph each shipped file stores.")
    if opts:
        note += f" Load them with the session option {', '.join(opts)}."
    return note


def search_text(search: dict) -> str:
    """One line on the rank search: what it chose, how fast that measured, and how long the search took."""
    levels = search.get("levels") or []
    chosen = levels[search["chosen"]] if 0 <= int(search.get("chosen", -1)) < len(levels) else {}
    sec = search.get("seconds") or {}
    speed = chosen.get("speedup")
    text = (f"Rank search: {len(levels)} levels timed, {search.get('probes', 0)} probes; chosen "
            f"{fmt(chosen.get('fraction'))} of the original MACs"
            + (f" ({speed:.2f}x faster measured)" if is_num(speed) else "")
            + f"; search time {fmt(sec.get('total'))} s")
    if sec:
        text += " (" + ", ".join(f"{k} {fmt(v)} s" for k, v in sec.items() if k != "total") + ")"
    tries = search.get("backoff") or []  # the searched level's training first, then one per back-off
    if len(tries) > 1:
        kept = next((t for t in tries if t.get("kept")), {})
        text += (f"; finetune backed off {len(tries) - 1} time(s) to a milder level"
                 + (f", shipped level {fmt(kept.get('fraction'))}" if kept else ""))
    return text + "."


def search_table(search: dict) -> tuple[list[str], list[list[str]]]:
    """One row per level of the rank search (MAC fraction, MACs, measured p50 and speedup, probe, outcome)."""
    cols = ["level", "MAC fraction", "MACs", "p50 ms", "speedup", "probe val acc", "kept", "chosen", "why"]
    rows = []
    for i, lv in enumerate(search.get("levels") or []):
        rows.append([str(i), fmt(lv.get("fraction")), _count(lv.get("macs")), _ms(lv.get("p50_ms")),
                     fmt(lv.get("speedup")), _pct(lv.get("probe_val")), "yes" if lv.get("kept") else "no",
                     "yes" if i == search.get("chosen") else "", str(lv.get("why") or "")])
    return cols, rows


def weight_bits_text(wb: dict | None) -> str | None:
    """One line on the int8 model's weight widths (``quantize.weight_bits``): what was chosen and what it held."""
    if not wb:
        return None
    fit = wb.get("fit") or {}
    if fit.get("kept_8bit"):
        return f"Weight widths: 8 bits kept ({fit['kept_8bit']})."
    widths = ", ".join(f"{n} layer(s) at {b} bits" for b, n in (wb.get("widths") or {}).items())
    grid = {"layer": "one step per layer", "octave": "per-channel steps a power of two apart",
            "channel": "one step per channel"}.get(str(wb.get("grid")))
    text = (f"Weight widths ({wb.get('mode')}{', ' + grid if grid else ''}): {fmt(wb.get('avg_bits'))} bits per "
            f"weight on average ({widths})")
    if fit:
        tries = fit.get("tries") or []
        if "check_drop" in fit:
            text += (f"; cut where the accuracy on validation and training images stays within "
                     f"{fmt(fit['check_drop'])} of the 8-bit weights' {fmt(fit.get('check_base'))} (shipped "
                     f"{fmt(fit.get('check_accuracy'))}; validation accuracy {fmt(fit.get('base_accuracy'))} at "
                     f"8 bits, {fmt(wb.get('accuracy'))} shipped)")
        else:
            text += (f"; fitted to the validation accuracy floor {fmt(fit.get('floor'))} (8-bit weights "
                     f"{fmt(fit.get('base_accuracy'))}, shipped {fmt(wb.get('accuracy'))})")
        text += (f": {fit.get('step')} of {fit.get('path_length')} narrowings kept, {fit.get('probes')} layer probes "
                 f"and {len(tries)} checks in {fmt(fit.get('seconds'))} s")
    elif wb.get("budget") is not None:
        text += f" under a budget of {fmt(wb.get('budget'))} bits per weight"
    return text + "."
