"""Every accepted value of the names users type (``list ...``), each with a one-line description.

The descriptions come from the registered objects' own docstrings where they have one, so a new format, coder or
model documents itself; the few values that are not registry entries (``auto``) or whose objects carry no docstring
are described here.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

from pipeline.registry import Registry

WHAT = ("stages", "formats", "models", "datasets", "targets", "selectors", "coders", "methods")

# Values accepted beside the registered names, and descriptions of objects that carry no docstring.
_EXTRA: dict[str, dict[str, str]] = {
    "formats": {"auto": "per layer, the registered form with the lowest modelled latency at the rank meeting the "
                        "error target"},
    "coders": {"auto": "per stream, the smallest coder (fast coders preferred unless rANS saves more than 1/128)"},
}
_FIXED: dict[str, dict[str, str]] = {
    "selectors": {
        "energy": "smallest rank keeping a fraction 1 - factorize.energy of the squared singular values",
        "erank": "ceil(effective rank x factorize.erank_factor) (Roy & Vetterli's entropy of the spectrum)",
        "vbmf": "variational Bayesian matrix factorization: ranks from the estimated noise level, no threshold",
        "fixed": "a fixed fraction factorize.ratio of the channels",
    },
}


def _first_line(text: str | None) -> str:
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip().rstrip(".")
    return ""


def _doc(obj: Any) -> str:
    """The first docstring line of a registered object (its module's for a coder record)."""
    encode = getattr(obj, "encode", None)
    if encode is not None and getattr(obj, "id", None) is not None:  # a coder record: its module documents it
        return _first_line(sys.modules[encode.__module__].__doc__)
    note = getattr(obj, "note", None)
    if isinstance(note, str) and note:
        return _first_line(note)
    fn = getattr(obj, "fn", None)  # a stage spec
    if callable(fn):
        return _first_line(fn.__doc__)
    return _first_line(getattr(obj, "__doc__", None))


# Where each list's registry lives: imported on demand, so `list coders` does not pay for torch.
_REGISTRIES: dict[str, tuple[str, str]] = {
    "stages": ("pipeline.stages", "pipeline.stage_api:STAGES"),
    "formats": ("pipeline.factorize.formats", "pipeline.factorize.formats:FORMATS"),
    "models": ("pipeline.models", "pipeline.models:MODELS"),
    "datasets": ("pipeline.data", "pipeline.data:DATASETS"),
    "targets": ("benchmarks.targets", "benchmarks.targets:TARGETS"),
    "selectors": ("pipeline.factorize.ranks", "pipeline.factorize.ranks:SELECTORS"),
    "coders": ("pipeline.entropy.coders", "pipeline.entropy.coders:CODERS"),
    "methods": ("pipeline.finetune", "pipeline.finetune:FINETUNE_METHODS"),
}


def _registry(what: str) -> Registry[Any]:
    registers, where = _REGISTRIES[what]
    importlib.import_module(registers)  # importing it registers the entries
    module, attr = where.split(":")
    return getattr(importlib.import_module(module), attr)


def describe(what: str) -> list[tuple[str, str]]:
    """``(name, one-line description)`` for every accepted value of ``what`` (one of :data:`WHAT`)."""
    if what not in WHAT:
        raise ValueError(f"unknown list {what!r}; choose one of {', '.join(WHAT)}")
    reg = _registry(what)
    fixed = _FIXED.get(what, {})
    rows = [(name, fixed.get(name) or _doc(reg.get(name)) or "(no description)") for name in reg.names()]
    rows.extend(_EXTRA.get(what, {}).items())
    return rows
