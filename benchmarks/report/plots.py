"""The report's plots as base64 PNGs (matplotlib, Agg backend, imported lazily: it is heavy and only the HTML
report needs it): accuracy vs latency and vs size with the Pareto front, per-layer latency, energy breakdown."""
from __future__ import annotations

import base64
import io
import math
from typing import Any, Callable

from benchmarks.report.schema import is_num
from benchmarks.report.tables import profile_rows


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    # No "Software" metadata: the PNG then carries no URL either.
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by any other (lower x is better, higher y is better), sorted by x."""
    front = []
    best = -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def scatter(variants: list[dict], xkey: Callable[[dict], Any], xlabel: str, title: str, logx: bool) -> str | None:
    """Accuracy vs ``xkey`` of each variant (``{"name", "accuracy", ...}``) with the Pareto front, as a base64 PNG
    (None when no variant has both values)."""
    import matplotlib.pyplot as plt

    pts = [(xkey(v), v.get("accuracy"), v["name"]) for v in variants]
    pts = [(x, y, n) for x, y, n in pts if is_num(x) and is_num(y) and x > 0]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], color="tab:blue", zorder=3)
    for x, y, n in pts:
        ax.annotate(n, (x, 100 * y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    front = pareto([(x, y) for x, y, _ in pts])
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


def plots(report: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    variants = report["variants"]
    p = scatter(variants, lambda v: v.get("latency_ms", {}).get("p50"), "p50 latency (ms)", "Accuracy vs latency", False)
    if p:
        out.append(("Accuracy vs latency (p50)", p))
    p = scatter(variants, lambda v: v.get("size_bytes"), "size (bytes, log scale)", "Accuracy vs size", True)
    if p:
        out.append(("Accuracy vs size", p))
    prof = profile_rows(report.get("node_profile"), report.get("layers"))[:25]
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
