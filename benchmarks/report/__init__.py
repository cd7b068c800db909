"""The run's report: ``report.json`` (schema version 1), ``report.md`` and a self-contained ``report.html``.

Modules: :mod:`~benchmarks.report.schema` (validation), :mod:`~benchmarks.report.tables` (rows shared by the
renderings), :mod:`~benchmarks.report.markdown`, :mod:`~benchmarks.report.plots`, :mod:`~benchmarks.report.html`.
The HTML embeds its plots as base64 PNGs and references nothing outside itself: no external CSS, scripts, fonts or
images, so it opens offline and leaks nothing when shared.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.report.html import render_html
from benchmarks.report.markdown import render_markdown
from benchmarks.report.schema import SCHEMA_VERSION, validate_report
from benchmarks.report.tables import headline_text
from pipeline.artifacts import atomic_write_json, atomic_write_text

__all__ = ["SCHEMA_VERSION", "headline_text", "render_html", "render_markdown", "validate_report", "write_report"]


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
