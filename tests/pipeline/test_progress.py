"""progress(): off a terminal, one summary line per loop instead of tqdm's carriage-return updates."""
from __future__ import annotations

import io
import logging
import sys

import pytest

from pipeline.progress import progress


def test_non_tty_is_small(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    err = io.StringIO()  # not a TTY
    monkeypatch.setattr(sys, "stderr", err)
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    for epoch in range(3):
        assert sum(progress(range(500), f"epoch {epoch}")) == sum(range(500))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[0].startswith("epoch 0: 500/500 done in")
    assert err.getvalue() == "" and sum(len(m) for m in lines) < 20_000


def test_every_pct_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    list(progress(iter(range(1000)), "calibrate", total=1000, every_pct=25))
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[:3] == ["calibrate: 250/1000 (25%)", "calibrate: 500/1000 (50%)", "calibrate: 750/1000 (75%)"]
    assert len(msgs) == 4 and "1000/1000 done" in msgs[3]


def test_disabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    assert list(progress([1, 2], "x", enabled=False)) == [1, 2] and not caplog.records
