"""Report schema version 1: :func:`validate_report` checks a report dict and lists every violation with its path."""
from __future__ import annotations

import math
from typing import Any, Callable

from pipeline.errors import ValidationError

SCHEMA_VERSION = 1
PERCENTILES = ("p50", "p90", "p99")


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
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
    (list or dict), ``mobile`` (dict), ``notes`` (list of strings: what the numbers mean, e.g. pseudo-labels),
    ``reach`` (out-of-reach MAC share in [0, 1], the cap ``max_mac_reduction`` >= 1 or null, fallen-back layers),
    ``search`` (the rank search: non-empty ``levels``, ``chosen`` index into them, ``seconds`` per phase).

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
    acc_ok = lambda v: v is None or (is_num(v) and 0.0 <= v <= 1.0)  # noqa: E731
    head = c.need(report, "headline", r, lambda v: isinstance(v, dict), "object")
    if head is not None:
        for k in ("smaller", "faster"):
            c.need(head, k, f"{r}.headline", lambda v: is_num(v) and v > 0, "positive number")
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
        c.need(v, "size_bytes", p, lambda x: is_int(x) and x > 0, "positive integer")
        c.need(v, "macs", p, lambda x: is_int(x) and x >= 0, "integer >= 0")
        c.need(v, "params", p, lambda x: is_int(x) and x >= 0, "integer >= 0")
        c.need(v, "file", p, lambda x: isinstance(x, str), "string")
        c.need(v, "energy", p, lambda x: isinstance(x, dict), "object", optional=True)
        lat = c.need(v, "latency_ms", p, lambda x: isinstance(x, dict), "object")
        if lat is not None:
            vals = [c.need(lat, k, f"{p}.latency_ms", lambda x: is_num(x) and x > 0, "positive number") for k in PERCENTILES]
            if all(x is not None for x in vals) and not (vals[0] <= vals[1] <= vals[2]):
                c.errors.append(f"{p}.latency_ms: percentiles out of order (p50 {vals[0]}, p90 {vals[1]}, p99 {vals[2]})")
    cont = c.need(report, "container", r, lambda v: isinstance(v, dict), "object")
    if cont is not None:
        c.need(cont, "file", f"{r}.container", lambda v: isinstance(v, str) and bool(v), "non-empty string")
        c.need(cont, "size_bytes", f"{r}.container", lambda v: is_int(v) and v > 0, "positive integer")
    is_rows = lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v)  # noqa: E731
    c.need(report, "layers", r, is_rows, "list of objects", optional=True)
    c.need(report, "stages", r, is_rows, "list of objects", optional=True)
    c.need(report, "node_profile", r, lambda v: isinstance(v, dict) or is_rows(v), "object or list of objects", optional=True)
    c.need(report, "mobile", r, lambda v: isinstance(v, dict), "object", optional=True)
    c.need(report, "notes", r, lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
           "list of strings", optional=True)
    reach = c.need(report, "reach", r, lambda v: isinstance(v, dict), "object", optional=True)
    if reach is not None:
        p = f"{r}.reach"
        c.need(reach, "out_of_reach_share", p, lambda v: is_num(v) and 0.0 <= v <= 1.0, "fraction in [0, 1]")
        c.need(reach, "max_mac_reduction", p, lambda v: v is None or (is_num(v) and v >= 1.0), "number >= 1 or null")
        c.need(reach, "macs_out_of_reach", p, lambda v: is_int(v) and v >= 0, "integer >= 0")
        c.need(reach, "layers_fallen_back", p, lambda v: is_int(v) and v >= 0, "integer >= 0")
        c.need(reach, "text", p, lambda v: isinstance(v, str) and bool(v), "non-empty string")
    search = c.need(report, "search", r, lambda v: isinstance(v, dict), "object", optional=True)
    if search is not None:
        p = f"{r}.search"
        levels = c.need(search, "levels", p, lambda v: is_rows(v) and len(v) > 0, "non-empty list of objects")
        c.need(search, "chosen", p, lambda v: is_int(v) and 0 <= v < len(levels or []), "index into levels")
        c.need(search, "seconds", p, lambda v: isinstance(v, dict) and all(is_num(x) and x >= 0 for x in v.values()),
               "object of seconds >= 0")
    if c.errors:
        raise ValidationError(f"report does not match schema version {SCHEMA_VERSION} ({len(c.errors)} problem(s)):\n  - "
                              + "\n  - ".join(c.errors))
