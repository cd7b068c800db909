"""``lowrank-deploy bench <suite>`` / ``make bench``: comparison suites, every variant of a table measured in one run.

Four things in this project are called "benchmark"; this package is the third:

1. :mod:`benchmarks` (top-level package): the measurement library (latency, accuracy, storage, energy, report).
2. the ``benchmark`` pipeline stage: measures one run's variants and writes its report (``BenchmarkConfig`` = 4.,
   the config section of that stage).
3. :mod:`pipeline.suites`: these suites, which compare many models / methods / formats side by side, each writing
   ``<out>/<suite>.json`` and ``<out>/<suite>.md`` (``all`` also writes ``<out>/bench.md``).

Suites (one module each): ``factorize`` (formats x rank alignment at a 3x MAC budget), ``models`` (models x
original / factorized / int8 variants), ``finetune`` (finetuning methods through the pipeline), ``storage`` (shipped
sizes and the container), ``shapes`` (accuracy under compression), ``peers`` (our shipped files beside ORT int8 /
fp16 of the original and general-purpose compressors). ``quick=True`` is a smoke run on tiny inputs
(``tiny`` network, 8x8 inputs, a 240-image data set, a few samples): it checks that every suite works end to end,
its numbers mean little.

Random weights are used where only speed and size are measured (they do not depend on values); accuracy columns
always come from trained models.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.errors import ConfigError
from pipeline.suites._common import Suite, Table, md_table, write_suites
from pipeline.suites.factorize import bench_factorize
from pipeline.suites.finetune import bench_finetune
from pipeline.suites.models import bench_models
from pipeline.suites.peers import bench_peers
from pipeline.suites.shapes import bench_shapes
from pipeline.suites.storage import bench_storage

__all__ = ["SUITES", "Table", "md_table", "run_bench"]

SUITES: dict[str, Suite] = {
    "factorize": bench_factorize,
    "models": bench_models,
    "finetune": bench_finetune,
    "storage": bench_storage,
    "shapes": bench_shapes,
    "peers": bench_peers,
}


def run_bench(suite: str, out_dir: str | Path = "artifacts/bench", quick: bool = False,
              root: str | Path = "artifacts") -> Path:
    """Run one suite (or ``all``) and write its tables; returns the Markdown file written.

    Args:
        suite: a name of :data:`SUITES` or ``all``.
        out_dir: where the tables go.
        quick: smoke run on tiny inputs.
        root: artifacts root of the suites' pipeline runs (cached stages are reused).

    Raises:
        ConfigError: an unknown suite name (before any work).
    """
    torch.set_num_threads(1)
    names = list(SUITES) if suite == "all" else [suite]
    for n in names:
        if n not in SUITES:
            raise ConfigError(f"unknown bench suite {n!r}; known suites: all, {', '.join(SUITES)}")
    out = Path(out_dir)
    target = out / ("bench.md" if suite == "all" else f"{suite}.md")
    write_suites(names, SUITES, out, quick, Path(root), combined=target if suite == "all" else None)
    return target
