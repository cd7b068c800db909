"""Stage 03, export: fp32 ONNX of the original, factorized and finetuned models with ORT-vs-torch parity, each
carrying the ``lowrank.*`` deploy metadata (preprocessing, labels). Its ``model.onnx`` is the one fp32 source of
truth: quantize quantizes exactly that file and makes the mobile files from it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from exporters.metadata import DeployMeta, meta_from_mapping, write_metadata
from exporters.onnx import export_onnx
from exporters.validate import check_parity
from pipeline.card import ModelCard
from pipeline.stage_api import StageContext, StageOutput, stage
from pipeline.stages._common import load

#: stage whose checkpoint is exported -> file name (model.onnx, the finetuned model, is the deliverable)
VARIANTS = (("finetune", "model.onnx"), ("baseline", "original.onnx"), ("factorize", "factorized.onnx"))

#: ModelCard.task -> the ``lowrank.task`` value an app reads
_TASK = {"classify": "classification"}


def deploy_meta(card: ModelCard) -> DeployMeta:
    """The ``lowrank.*`` metadata of the model ``card`` describes (dynamic batch, not baked)."""
    return meta_from_mapping({
        "mean": card.mean, "std": card.std, "input_size": card.input_shape, "num_classes": card.num_classes,
        "class_names": card.class_names, "task": _TASK.get(card.task, card.task),
    })


@stage(
    "export",
    # export.mobile / mobile_target / bake_preprocessing are quantize's reads: they change no file made here
    reads=("export.opset", "export.simplify", "export.atol", "export.rtol"),
    inputs=("baseline", "factorize", "finetune"),
    version=3,
    deliverables={"model.onnx": "model.onnx"},
)
def run(ctx: StageContext) -> StageOutput:
    """fp32 ONNX of the original, factorized and finetuned models with ORT-vs-torch parity and deploy metadata.

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
        # after the parity check: metadata_props change no node, and every shipped copy starts from this file
        write_metadata(ctx.out_dir / fname, deploy_meta(card))
        files.append(fname)
    ctx.log.info("export: model.onnx parity ok (batch 1 and 4), deploy metadata written")
    return StageOutput(files, metrics)
