"""Stage 06, benchmark: measure every variant in one run (accuracy, size, MACs, latency) and write the report."""
from __future__ import annotations

from pipeline.report_builder import REPORT_READS, build_report
from pipeline.stage_api import DATASET, StageContext, StageOutput, stage


@stage(
    "benchmark",
    reads=("benchmark", DATASET) + REPORT_READS,
    inputs=("baseline", "factorize", "finetune", "export", "quantize", "entropy-code"),
    deliverables={"report.md": "report.md", "report.json": "report.json", "report.html": "report.html"},
)
def run(ctx: StageContext) -> StageOutput:
    """Measure every variant in one run (accuracy, size, MACs, latency) and write the report."""
    paths = build_report(ctx)
    return StageOutput([p.name for p in paths.values()], {"report": {k: p.name for k, p in paths.items()}})
