"""Stage 04, quantize: int8 QDQ of export's fp32 ``model.onnx`` via ONNX Runtime's static quantizer, calibrated on
real training images; accuracy measured in ORT. It exports nothing itself, so the int8 model and the shipped fp32
model come from one file (the quantization-aware finetune, when on, ran in the finetune stage).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.accuracy import onnx_accuracy, onnx_predict
from exporters.metadata import write_metadata
from pipeline.checkpoint import load_card
from pipeline.fidelity_gate import onnx_fidelity
from pipeline.quantize.ort_static import output_sqnr, quantize_static
from pipeline.stage_api import DATASET, StageContext, StageOutput, stage
from pipeline.stages._deliver import DELIVERABLES, ship
from pipeline.stages.export import deploy_meta

#: the fp32 model quantized: export's deliverable
SOURCE = ("export", "model.onnx")
#: validation images the weight-width fit (quantize.weight_bits=auto) measures output errors on
PROBE_IMAGES = 256
#: training images added to the validation split for the fit's accuracy check
CHECK_TRAIN_IMAGES = 1024


@stage("quantize", reads=("quantize", DATASET, "export.mobile", "export.mobile_target", "export.bake_preprocessing"),
       inputs=("baseline", "export/model.onnx"), version=11, deliverables=DELIVERABLES)
def run(ctx: StageContext) -> StageOutput:
    """int8 QDQ via ONNX Runtime's static quantizer, calibrated on real training images; accuracy measured in ORT."""
    cfg = ctx.cfg
    data = ctx.data()
    fp32 = ctx.inputs[SOURCE[0]].path(SOURCE[1])
    rng = np.random.default_rng(cfg.seed)
    n_cal = min(cfg.quantize.calib_size, len(data.train.x))
    idx = np.sort(rng.choice(len(data.train.x), size=n_cal, replace=False))
    calib = data.train.x[idx].numpy().astype(np.float32)
    val_x = data.val.x.numpy().astype(np.float32)
    # the accuracy guard needs class labels (maps / sequences are scored per head by the benchmark)
    val_y = data.val.y.numpy() if data.val.class_labels else None
    fp32_val = onnx_accuracy(fp32, val_x, val_y) if val_y is not None else None
    eval_fn = (lambda p: onnx_accuracy(p, val_x, val_y)) if val_y is not None else None
    # the weight-width fit measures each layer's output error on a fixed slice of the validation images
    probe_x = val_x[:PROBE_IMAGES]
    # ... and holds the 8-bit model's accuracy on validation plus training images: far more images than a small
    # validation split, where one flipped image would decide the cut
    n_check = min(CHECK_TRAIN_IMAGES, len(data.train.x))
    check_idx = np.sort(rng.choice(len(data.train.x), size=n_check, replace=False))
    check_x = np.concatenate([val_x, data.train.x[check_idx].numpy().astype(np.float32)])
    check_y = np.concatenate([val_y, data.train.y[check_idx].numpy()]) if val_y is not None else None
    check_fn = (lambda p: onnx_accuracy(p, check_x, check_y)) if check_y is not None else None
    out = ctx.out_dir / "model.int8.onnx"
    qinfo = quantize_static(fp32, out, calib, cfg.quantize, eval_fn=eval_fn, fp32_accuracy=fp32_val,
                            progress=ctx.progress, predict_fn=lambda p: onnx_predict(p, probe_x),
                            check_fn=check_fn)
    test_x = data.test.x.numpy().astype(np.float32)
    ref = onnx_predict(fp32, test_x)
    q = onnx_predict(out, test_x)
    metrics: dict[str, Any] = {
        "source": f"{SOURCE[0]}/{SOURCE[1]}",
        "calibration_images": n_cal,
        "agreement": float((ref.argmax(1) == q.argmax(1)).mean()),
        "sqnr_db": float(output_sqnr(ref, q)),
        **{k: v for k, v in qinfo.items() if k != "guard"},
        "guard": qinfo.get("guard"),
    }
    if data.test.class_labels:
        y = data.test.y.numpy()
        metrics["fp32_test_accuracy"] = float((ref.argmax(1) == y).mean())
        metrics["test_accuracy"] = float((q.argmax(1) == y).mean())
    card = load_card(ctx.inputs["baseline"].dir)
    if card.output == "heads":  # outputs that are not one classifier: per-head fidelity, no argmax agreement
        metrics["fidelity"] = onnx_fidelity(card, fp32, out, test_x)
        metrics["agreement"] = None
        ctx.log.info("quantize: int8 fidelity to the fp32 model: %s", "; ".join(
            ", ".join(f"{k} {v:.4f}" for k, v in e.items() if isinstance(v, float)) + f" ({e['name']})"
            for e in metrics["fidelity"]))
    else:
        ctx.log.info("quantize: int8 test accuracy %s, top-1 agreement %.4f, SQNR %.1f dB",
                     metrics.get("test_accuracy"), metrics["agreement"], metrics["sqnr_db"])
    meta = deploy_meta(card)
    write_metadata(out, meta)
    t0 = time.monotonic()
    shipped, ship_metrics = ship(cfg, ctx.out_dir, fp32, out, meta)
    if ctx.progress and cfg.export.mobile:  # the .ort conversion and usability checks are most of this stage's time
        ctx.log.info("quantize: mobile files for %s made and checked in %.1fs", ship_metrics.get("mobile_target"),
                     time.monotonic() - t0)
    metrics.update(ship_metrics)
    return StageOutput(["model.int8.onnx", *shipped], metrics)
