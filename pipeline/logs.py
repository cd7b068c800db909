"""Logger names: every module logs under :data:`ROOT`, the logger the runner gives its stderr and ``run.log`` handlers.

A module logger outside that tree (e.g. ``logging.getLogger(__name__)`` = ``pipeline.progress``) propagates to the
root logger instead, so its lines never reached ``run.log`` and, without a root handler, only Python's last-resort
handler printed its warnings. :func:`get_logger` keeps every module's logger a child of :data:`ROOT`.
"""
from __future__ import annotations

import logging

#: the runner's logger (pipeline.runner attaches the stderr and run.log handlers to it)
ROOT = "lowrank_deploy"


def get_logger(module: str) -> logging.Logger:
    """The logger of ``module`` (pass ``__name__``), a child of :data:`ROOT` so its lines reach stderr and run.log."""
    return logging.getLogger(ROOT if module == ROOT else f"{ROOT}.{module}")
