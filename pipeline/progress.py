"""Progress display: tqdm on a terminal, one summary line per loop otherwise (keeps logs of non-TTY runs small)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from pipeline.logs import get_logger

T = TypeVar("T")
log = get_logger(__name__)  # under the runner's logger: reaches stderr and run.log


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool = True,
             every_pct: int = 0) -> Iterator[T]:
    """Yield from ``iterable``, showing progress.

    Args:
        iterable: what to loop over.
        desc: label of the loop (e.g. ``"finetune epoch 3"``).
        total: number of items, when ``len(iterable)`` is unknown.
        enabled: False shows nothing.
        every_pct: off a terminal, also log a line every ``every_pct`` percent (0: only the final line); bounded to
            at most 100 / every_pct lines per loop, so stderr stays small.

    On a terminal this is tqdm; otherwise a single ``desc: n/total done in s`` line is logged when the loop ends.
    """
    if not enabled:
        yield from iterable
        return
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if _is_tty():
        from tqdm import tqdm  # third-party, only needed on a terminal
        yield from tqdm(iterable, desc=desc, total=total, leave=False)
        return
    start = time.monotonic()
    n = 0
    next_pct = every_pct if every_pct > 0 else 101
    for item in iterable:
        yield item
        n += 1
        if total and every_pct > 0 and n < total and 100 * n // total >= next_pct:
            log.info("%s: %d/%d (%d%%)", desc, n, total, 100 * n // total)
            next_pct = (100 * n // total // every_pct + 1) * every_pct
    log.info("%s: %d%s done in %.1fs", desc, n, f"/{total}" if total else "", time.monotonic() - start)
