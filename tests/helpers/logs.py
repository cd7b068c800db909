"""Capture what a project logger emits, whatever ``propagate`` says.

The runner's logger (``lowrank_deploy``) stops propagating once ``configure_logging`` ran (the CLI does, also in
in-process tests), so pytest's ``caplog`` (a root handler) would miss its children's lines; this handler sits on the
logger itself.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def captured(logger: logging.Logger, level: int = logging.INFO) -> Iterator[list[logging.LogRecord]]:
    """Yield the list of records ``logger`` (and its children) emit at ``level`` or above inside the block."""
    h = _ListHandler()
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(level)
    try:
        yield h.records
    finally:
        logger.removeHandler(h)
        logger.setLevel(old)
