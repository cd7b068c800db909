"""Stage 03, export: fp32 ONNX of the original, factorized and finetuned models with ORT-vs-torch parity, and the
ORT format for mobile. Its ``model.onnx`` is the one fp32 source of truth: quantize quantizes exactly that file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporters.onnx import export_onnx
from exporters.ort_mobile import convert_to_ort, mobile_usability
from exporters.validate import check_parity
from pipeline.artifacts import atomic_write_json
from pipeline.stage_api import StageContext, StageOutput, stage
from pipeline.stages._common import load

#: stage whose checkpoint is exported -> file name (model.onnx, the finetuned model, is the deliverable)
VARIANTS = (("finetune", "model.onnx"), ("baseline", "original.onnx"), ("factorize", "factorized.onnx"))


@stage(
    "export",
    reads=("export",),
    inputs=("baseline", "factorize", "finetune"),
    deliverables={"model.onnx": "model.onnx", "model.ort": "model.ort", "required_operators.config": "required_operators.config"},
)
def run(ctx: StageContext) -> StageOutput:
    """fp32 ONNX of the original, factorized and finetuned models with ORT-vs-torch parity; ORT format for mobile.

    For a graph-only model (ONNX fallback) "torch" is the stored graph run by ORT, so parity checks what the export
    changed (opset conversion, onnxsim, Flatten -> Reshape, dynamic batch).
    """
    cfg = ctx.cfg
    rng = np.random.default_rng(cfg.seed)
    metrics: dict[str, Any] = {}
    files: list[str] = []
    for stage_name, fname in VARIANTS:
        model, card = load(ctx, stage_name)
        shape = card.input_shape
        info = export_onnx(model, shape, ctx.out_dir / fname, opset=cfg.export.opset, simplify=cfg.export.simplify)
        # A graph-only model whose batch size is baked into its graph keeps it fixed (export_graph says so).
        batches = (1, 4) if info.get("dynamic_batch", True) else (1,)
        inputs = [rng.standard_normal((b, *shape)).astype(np.float32) for b in batches]
        parity = check_parity(model, ctx.out_dir / fname, inputs, atol=cfg.export.atol, rtol=cfg.export.rtol)
        metrics[fname] = {"nodes": info.get("nodes"), "simplified": info.get("simplified"), "parity": parity,
                          "dynamic_batch": info.get("dynamic_batch")}
        if info.get("opset_note"):
            metrics[fname]["opset_note"] = info["opset_note"]
        files.append(fname)
    if cfg.export.mobile:
        ort = convert_to_ort(ctx.out_dir / "model.onnx", ctx.out_dir)
        for p in (ort["ort_path"], ort["config_path"]):
            files.append(Path(p).name)
        usability = mobile_usability(ctx.out_dir / "model.onnx")
        atomic_write_json(ctx.out_dir / "mobile.json", usability)
        files.append("mobile.json")
        metrics["ort_bytes"] = ort.get("bytes")
    ctx.log.info("export: model.onnx parity ok (batch 1 and 4)%s", ", model.ort written" if cfg.export.mobile else "")
    return StageOutput(files, metrics)
