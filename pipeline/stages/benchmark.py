"""Stage 06, benchmark: measure every variant in one run (accuracy, size, MACs, latency), write the report and
``model.json`` (how an app feeds the shipped files and reads their outputs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exporters.deliverables import deploy_model_json
from exporters.metadata import for_file
from pipeline.artifacts import atomic_write_json
from pipeline.checkpoint import load_card
from pipeline.report_builder import REPORT_READS, build_report
from pipeline.stage_api import Artifact, DATASET, StageContext, StageOutput, stage
from pipeline.stages.export import deploy_meta

MODEL_JSON = "model.json"


def shipped_facts(quantize: Artifact) -> dict[str, dict[str, Any]]:
    """``{deploy name: per-file facts}`` of every graph and container that ships (model.json's ``files``)."""
    baked = bool(quantize.metrics.get("baked"))
    graph = {"preprocessing_baked": baked}
    facts: dict[str, dict[str, Any]] = {
        "model.onnx": {**graph, "precision": "fp32", "batch": "dynamic"},
        "model.int8.onnx": {**graph, "precision": "int8", "batch": "dynamic"},
        "weights.lrdc": {"precision": "int8", "container": True, "preprocessing_baked": False,
                         "decodes_to": "model.int8.onnx as measured (unbaked); `lowrank-deploy unpack` or lrdc-decode"},
    }
    mobile = quantize.dir / "mobile.json"
    if mobile.is_file():
        mob = json.loads(mobile.read_text())
        for b1, src in (mob.get("fixed") or {}).items():
            facts[b1] = {**facts[src], "batch": 1, "source": src}
        for name, e in (mob.get("ort") or {}).items():
            src = e.get("source", "")
            facts[name] = {**facts.get(src, graph), "source": src, "style": e.get("style"),
                           "session_config": dict(e.get("session_config") or {})}
        facts[mob.get("config", "required_operators.config")] = {"ort_build_config": True}
    return facts


@stage(
    "benchmark",
    reads=("benchmark", DATASET) + REPORT_READS,
    inputs=("baseline", "factorize", "finetune", "export", "quantize", "entropy-code"),
    version=3,
    deliverables={"report.md": "report.md", "report.json": "report.json", "report.html": "report.html",
                  MODEL_JSON: MODEL_JSON},
)
def run(ctx: StageContext) -> StageOutput:
    """Measure every variant in one run (accuracy, size, MACs, latency); write the report and model.json."""
    paths = build_report(ctx)
    q = ctx.inputs["quantize"]
    meta = for_file(deploy_meta(load_card(ctx.inputs["baseline"].dir)), baked=bool(q.metrics.get("baked")))
    atomic_write_json(ctx.out_dir / MODEL_JSON, deploy_model_json(meta, shipped_facts(q)))
    names = [Path(p).name for p in paths.values()] + [MODEL_JSON]
    return StageOutput(names, {"report": {k: Path(p).name for k, p in paths.items()}})
