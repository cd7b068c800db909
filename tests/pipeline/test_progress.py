"""progress(): off a terminal, one summary line per loop instead of tqdm's carriage-return updates."""
from __future__ import annotations

import io
import sys

import pytest

from pipeline.progress import log, progress
from tests.helpers.logs import captured


def test_non_tty_is_small(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()  # not a TTY
    monkeypatch.setattr(sys, "stderr", err)
    with captured(log) as records:
        for epoch in range(3):
            assert sum(progress(range(500), f"epoch {epoch}")) == sum(range(500))
    lines = [r.getMessage() for r in records]
    assert len(lines) == 3 and lines[0].startswith("epoch 0: 500/500 done in")
    # no tqdm updates: stderr holds at most the log lines themselves (when the CLI configured a stderr handler)
    assert "\r" not in err.getvalue() and len(err.getvalue().splitlines()) <= 3
    assert sum(len(m) for m in lines) < 20_000


def test_every_pct_bounded() -> None:
    with captured(log) as records:
        list(progress(iter(range(1000)), "calibrate", total=1000, every_pct=25))
    msgs = [r.getMessage() for r in records]
    assert msgs[:3] == ["calibrate: 250/1000 (25%)", "calibrate: 500/1000 (50%)", "calibrate: 750/1000 (75%)"]
    assert len(msgs) == 4 and "1000/1000 done" in msgs[3]


def test_disabled() -> None:
    with captured(log) as records:
        assert list(progress([1, 2], "x", enabled=False)) == [1, 2]
    assert not records


def test_progress_logger_is_under_the_runners_logger() -> None:
    from pipeline.logs import ROOT

    assert log.name.startswith(ROOT + ".")
