"""The pipeline's stages, registered in run order. Each is a thin composition of the subsystem packages.

baseline -> factorize -> finetune -> quantize -> entropy-code -> export -> benchmark
Every stage reads earlier artifacts, writes only into ``ctx.out_dir``, and validates its own output.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import ValidationError
from pipeline.stage_api import StageContext, StageOutput, stage

EVAL_BATCH = 256


def _seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _example_input(meta: dict[str, Any], batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, meta["in_channels"], meta["input_size"], meta["input_size"])


def _load(ctx: StageContext, stage_name: str):
    """Load the model checkpoint an earlier stage wrote (cached per run)."""
    from pipeline.checkpoint import load_model

    key = f"model:{stage_name}"
    if key not in ctx.cache:
        ctx.cache[key] = load_model(ctx.inputs[stage_name].dir)
    model, meta = ctx.cache[key]
    return copy.deepcopy(model), dict(meta)


def _is_graph(model: torch.nn.Module) -> bool:
    """Whether ``model`` exists only as an ONNX graph (the fallback for ONNX files the importer cannot convert)."""
    from pipeline.models.ort_graph import OrtGraphModel

    return isinstance(model, OrtGraphModel)


def _macs_params(model: torch.nn.Module, meta: dict[str, Any], folder: Path) -> tuple[int, int]:
    """MACs per sample and parameters: hooks on the torch layers, or the ONNX graph's own count for a graph-only
    model (``folder`` holds its saved ``model.onnx``; the same counter as the benchmark report)."""
    from pipeline.factorize.swap import count_macs_params

    if _is_graph(model):
        from benchmarks.energy import onnx_layer_stats

        stats = onnx_layer_stats(folder / "model.onnx", (meta["in_channels"], meta["input_size"], meta["input_size"]))
        return int(stats["macs"]), int(stats["params"])
    return count_macs_params(model, _example_input(meta))


def _accuracy(model: torch.nn.Module, split) -> float:
    from pipeline.finetune.trainer import evaluate

    if split.y is None:
        return float("nan")
    return float(evaluate(model, split, batch_size=EVAL_BATCH))


def _check_finite(model: torch.nn.Module, where: str) -> None:
    from pipeline.errors import NumericalError

    for name, p in model.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise NumericalError(f"{where}: tensor {name!r} contains NaN/Inf; check the input weights or lower the learning rate")


# ---------------------------------------------------------------------------------------------------------------- 00
@stage("baseline", section="baseline", version=2, deliverables={})
def baseline(ctx: StageContext) -> StageOutput:
    """Build the model; load the user's weights or ONNX file, or train it on the dataset when none are given.

    Unlabelled data (an npz with only ``x``) need a pretrained model (``--weights`` or an ONNX file): every split is
    then labelled with the original model's top-1 predictions (``pseudo_labels.npz`` in this stage's folder, read by
    every later stage), so accuracies mean agreement with the original model. An ONNX model sees the images as the
    user stored them (no dataset normalisation; see ``StageContext.data``); one the torch importer cannot convert but
    ONNX Runtime runs is kept as its graph (later stages factorize the graph and skip finetuning).
    """
    from pipeline import pseudo_labels
    from pipeline.checkpoint import save_model
    from pipeline.errors import InputError
    from pipeline.finetune.trainer import train_baseline
    from pipeline.models import build_model, class_count_from_weights, load_weights

    cfg = ctx.cfg
    data = ctx.data()
    _seed(cfg.seed)
    is_onnx = cfg.model.endswith(".onnx")
    labelled = data.train.y is not None
    if not labelled and not is_onnx and not cfg.weights:
        raise InputError(
            f"dataset {cfg.data!r} has no labels, and model {cfg.model!r} has no trained weights, so a baseline would "
            f"have to be trained, which needs labels. Add labels (an npz array 'y'), or pass --weights CKPT with the "
            f"model's trained weights, or --model model.onnx of a pretrained model: their predictions then serve as "
            f"labels"
        )
    num_classes = data.num_classes
    history: dict[str, Any] = {}
    fallback: str | None = None
    if is_onnx:
        # An imported ONNX model is already trained: check it fits the data, then use it as is.
        from pipeline.models import load_onnx_model, onnx_model_info

        if cfg.weights:
            raise InputError(f"--weights is not used with an ONNX model ({cfg.model!r} carries its weights); "
                             f"drop --weights")
        info = onnx_model_info(cfg.model)
        want = {"in_channels": data.in_channels, "num_classes": data.num_classes}
        bad = {k: (info[k], v) for k, v in want.items() if v and info.get(k) and info[k] != v}
        if info.get("input_size") and info["input_size"] != data.input_size:
            bad["input_size"] = (info["input_size"], data.input_size)
        if bad:
            detail = ", ".join(f"{k}: model {m} vs dataset {d}" for k, (m, d) in bad.items())
            raise InputError(f"ONNX model {cfg.model!r} does not fit dataset {cfg.data!r} ({detail}); "
                             f"use a dataset of the model's geometry (images are fed as stored, not normalised)")
        num_classes = int(info["num_classes"])  # the model's output; the dataset may declare none
        model, fallback = load_onnx_model(cfg.model, (data.in_channels, data.input_size, data.input_size))
        if fallback:
            ctx.log.warning("baseline: the torch importer cannot convert %s (%s); using the ONNX graph as is: "
                            "factorize rewrites the graph, finetuning will be skipped", cfg.model, fallback)
        source = "onnx"
    elif cfg.weights:
        if not num_classes:  # unlabelled and undeclared: the checkpoint's classifier says how many
            num_classes = class_count_from_weights(cfg.model, cfg.weights, data.in_channels, data.input_size)
        model = build_model(cfg.model, num_classes, data.in_channels, data.input_size)
        load_weights(model, cfg.weights)
        source = "weights"
    else:
        model = build_model(cfg.model, num_classes, data.in_channels, data.input_size)
        model, history = train_baseline(model, data, cfg.baseline, seed=cfg.seed, device=cfg.device, progress=ctx.progress)
        source = "trained"
    model = model.cpu().eval()
    _check_finite(model, "baseline")
    meta = {
        "spec": cfg.model,
        "num_classes": int(num_classes),
        "in_channels": data.in_channels,
        "input_size": data.input_size,
        "mean": list(data.mean),
        "std": list(data.std),
        "structure": {},
    }
    files = save_model(model, meta, ctx.out_dir)
    if not labelled:
        labels = pseudo_labels.predict_labels(model, data, batch=EVAL_BATCH)
        files.append(pseudo_labels.save_labels(ctx.out_dir, labels))
        data = pseudo_labels.apply_labels(data, labels, int(num_classes))
        ctx.cache["data"] = data  # later stages of this run see the labelled data (resumed runs read the file)
        ctx.log.info("baseline: dataset %s has no labels; labelled with the original model's top-1 predictions "
                     "(accuracy = agreement with the original model)", cfg.data)
    macs, params = _macs_params(model, meta, ctx.out_dir)
    metrics = {
        "source": source,
        "labels": pseudo_labels.DATASET if labelled else pseudo_labels.PSEUDO,
        "val_accuracy": _accuracy(model, data.val),
        "test_accuracy": _accuracy(model, data.test),
        "macs": macs,
        "params": params,
        "train_seconds": history.get("seconds"),
    }
    if is_onnx:
        metrics["form"] = "onnx_graph" if fallback else "torch"
        metrics["inputs"] = "as stored in the dataset (no mean/std normalisation; uint8 scaled to [0, 1])"
        if fallback:
            metrics["onnx_fallback"] = fallback
    ctx.log.info("baseline: test accuracy %.4f, %.1f MMAC, %.3f M params", metrics["test_accuracy"], macs / 1e6, params / 1e6)
    return StageOutput(files, metrics)


# ---------------------------------------------------------------------------------------------------------------- 01
@stage("factorize", section="factorize", version=1, deliverables={"layers.json": "factorize_layers.json"})
def factorize(ctx: StageContext) -> StageOutput:
    """Replace eligible conv/linear layers by low-rank forms; record the per-layer table."""
    from dataclasses import asdict

    from pipeline.artifacts import atomic_write_json
    from pipeline.checkpoint import save_model
    from pipeline.factorize.swap import count_macs_params, factorize_model
    from pipeline.finetune.trainer import evaluate

    data = ctx.data()
    model, meta = _load(ctx, "baseline")
    if _is_graph(model):
        return _factorize_graph(ctx, model, meta)
    _check_finite(model, "factorize input")
    _seed(ctx.cfg.seed)
    # Sensitivity for the budget selector is measured on a small, fixed validation subset.
    n_eval = min(len(data.val.x), ctx.cfg.factorize.budget.eval_samples)
    from pipeline.data import Split

    sub = Split(data.val.x[:n_eval], data.val.y[:n_eval] if data.val.y is not None else None)
    eval_fn = (lambda m: float(evaluate(m, sub, batch_size=EVAL_BATCH))) if sub.y is not None else None
    t0 = time.perf_counter()
    fact, layers, structure = factorize_model(model, ctx.cfg.factorize, _example_input(meta), eval_fn=eval_fn)
    seconds = time.perf_counter() - t0
    fact.eval()
    meta["structure"] = structure
    files = save_model(fact, meta, ctx.out_dir)
    rows = [asdict(r) for r in layers]
    atomic_write_json(ctx.out_dir / "layers.json", rows)
    macs0, params0 = count_macs_params(model, _example_input(meta))
    macs1, params1 = count_macs_params(fact, _example_input(meta))
    metrics = _factorize_metrics(rows, (macs0, params0), (macs1, params1), fact, data, seconds)
    ctx.log.info(
        "factorize: %d layers factorized, MACs %.1fM -> %.1fM (%.2fx), accuracy before finetune %.4f",
        metrics["layers_factorized"], macs0 / 1e6, macs1 / 1e6, metrics["mac_reduction"], metrics["test_accuracy"],
    )
    return StageOutput(files + ["layers.json"], metrics)


def _factorize_metrics(rows: list[dict[str, Any]], before: tuple[int, int], after: tuple[int, int], fact,
                       data, seconds: float) -> dict[str, Any]:
    """The factorize stage's metrics, shared by the torch and the ONNX-graph paths."""
    return {
        "layers_factorized": sum(r["status"] == "factorized" for r in rows),
        "layers_dense": sum(r["status"] != "factorized" for r in rows),
        "macs_before": before[0],
        "macs_after": after[0],
        "mac_reduction": before[0] / max(after[0], 1),
        "params_before": before[1],
        "params_after": after[1],
        "test_accuracy": _accuracy(fact, data.test),
        "val_accuracy": _accuracy(fact, data.val),
        "seconds": round(seconds, 3),
    }


def _factorize_graph(ctx: StageContext, model, meta: dict[str, Any]) -> StageOutput:
    """Factorize stage for a graph-only model: its Conv nodes rewritten on the graph (pipeline.factorize.onnx_graph)."""
    from dataclasses import asdict

    from pipeline.artifacts import atomic_write_json
    from pipeline.checkpoint import save_model
    from pipeline.factorize.onnx_graph import factorize_graph
    from pipeline.models.ort_graph import OrtGraphModel

    data = ctx.data()
    shape = (meta["in_channels"], meta["input_size"], meta["input_size"])
    t0 = time.perf_counter()
    proto, layers, structure = factorize_graph(model.proto, ctx.cfg.factorize, shape)
    seconds = time.perf_counter() - t0
    fact = OrtGraphModel.from_proto(proto, source=model.source)
    meta["structure"] = structure
    files = save_model(fact, meta, ctx.out_dir)
    rows = [asdict(r) for r in layers]
    atomic_write_json(ctx.out_dir / "layers.json", rows)
    macs0, params0 = _macs_params(model, meta, ctx.inputs["baseline"].dir)
    macs1, params1 = _macs_params(fact, meta, ctx.out_dir)
    metrics = {"form": "onnx_graph", **_factorize_metrics(rows, (macs0, params0), (macs1, params1), fact, data, seconds)}
    ctx.log.info("factorize (ONNX graph): %d Conv nodes factorized, MACs %.1fM -> %.1fM (%.2fx), accuracy %.4f",
                 metrics["layers_factorized"], macs0 / 1e6, macs1 / 1e6, metrics["mac_reduction"],
                 metrics["test_accuracy"])
    return StageOutput(files + ["layers.json"], metrics)


# ---------------------------------------------------------------------------------------------------------------- 02
@stage("finetune", section="finetune", version=1, deliverables={})
def finetune(ctx: StageContext) -> StageOutput:
    """Recover accuracy (distillation from the original by default, or a training method of the source papers)."""
    from pipeline.artifacts import atomic_write_json
    from pipeline.checkpoint import save_model
    from pipeline.factorize.swap import count_macs_params
    from pipeline.finetune import FinetuneJob, finetune as run_finetune

    data = ctx.data()
    student, meta = _load(ctx, "factorize")
    labels = ctx.inputs["baseline"].metrics.get("labels", "dataset")
    if _is_graph(student):
        return _skip_finetune(ctx, student, meta, labels)
    teacher, _ = _load(ctx, "baseline")
    _seed(ctx.cfg.seed)
    job = FinetuneJob(
        student=student,
        teacher=teacher,
        structure=dict(meta["structure"]),
        data=data,
        cfg=ctx.cfg.finetune,
        seed=ctx.cfg.seed,
        device=ctx.cfg.device,
        progress=ctx.progress,
        example_input=_example_input(meta),
        align=ctx.cfg.factorize.align,
        model_spec=ctx.cfg.model,
    )
    result = run_finetune(job)
    model = result.model.cpu().eval()
    _check_finite(model, "finetune")
    meta["structure"] = result.structure
    files = save_model(model, meta, ctx.out_dir)
    atomic_write_json(ctx.out_dir / "history.json", result.history)
    macs, params = count_macs_params(model, _example_input(meta))
    metrics = {
        "method": ctx.cfg.finetune.method,
        "labels": labels,
        "test_accuracy": _accuracy(model, data.test),
        "val_accuracy": _accuracy(model, data.val),
        "macs": macs,
        "params": params,
        **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str, bool, list, dict, type(None)))},
    }
    ctx.log.info("finetune (%s): test accuracy %.4f", metrics["method"], metrics["test_accuracy"])
    return StageOutput(files + ["history.json"], metrics)


FINETUNE_SKIPPED = ("the model exists only as an ONNX graph (the torch importer cannot convert it), which cannot be "
                    "trained; the factorized graph is used as is")


def _skip_finetune(ctx: StageContext, model, meta: dict[str, Any], labels: str) -> StageOutput:
    """Finetune stage for a graph-only model: nothing to train, so pass the factorized graph on and say why."""
    from pipeline.artifacts import atomic_write_json
    from pipeline.checkpoint import save_model

    data = ctx.data()
    ctx.log.warning("finetune skipped (finetune.method=%s): %s", ctx.cfg.finetune.method, FINETUNE_SKIPPED)
    files = save_model(model, meta, ctx.out_dir)
    atomic_write_json(ctx.out_dir / "history.json", {"epochs": [], "skipped": FINETUNE_SKIPPED})
    macs, params = _macs_params(model, meta, ctx.out_dir)
    metrics = {
        "method": "skipped",
        "configured_method": ctx.cfg.finetune.method,
        "skipped": True,
        "skip_reason": FINETUNE_SKIPPED,
        "labels": labels,
        "test_accuracy": _accuracy(model, data.test),
        "val_accuracy": _accuracy(model, data.val),
        "macs": macs,
        "params": params,
    }
    return StageOutput(files + ["history.json"], metrics)


# ---------------------------------------------------------------------------------------------------------------- 03
def _quantization_aware(ctx: StageContext, model, data):
    """``quantize.qat_epochs > 0``: distil the model with its conv weights fake-quantized to ``weight_bits``.

    Returns ``(model, metrics)``, or None when QAT is off. The model the quantizer then sees (and the fp32 variant
    the report measures) carries weights already on the b-bit grids, so the snap changes almost nothing.
    """
    qcfg = ctx.cfg.quantize
    if qcfg.qat_epochs <= 0:
        return None
    from pipeline.models.ort_graph import OrtGraphModel
    from pipeline.quantize.qat import qat_finetune

    # weight_bits is 2..7 here: build_config rejects qat_epochs > 0 with any other value
    if isinstance(model, OrtGraphModel):
        ctx.log.warning("quantize: quantization-aware training skipped: the model is an ONNX graph without torch layers")
        return None
    teacher, _ = _load(ctx, "baseline")
    _seed(ctx.cfg.seed)
    trained, hist = qat_finetune(model, teacher, data, int(qcfg.weight_bits), qcfg.qat_epochs, qcfg.qat_lr,
                                 ctx.cfg.finetune, seed=ctx.cfg.seed, device=ctx.cfg.device, progress=ctx.progress)
    metrics = {"bits": int(qcfg.weight_bits), "epochs": qcfg.qat_epochs, "val_before": hist["val_before"],
               "best_val": hist["best_val"]}
    ctx.log.info("quantize: %d-bit QAT, val accuracy %.4f -> %.4f", metrics["bits"], metrics["val_before"],
                 metrics["best_val"])
    return trained, metrics


@stage("quantize", section="quantize", version=1, deliverables={"model.int8.onnx": "model.int8.onnx"})
def quantize(ctx: StageContext) -> StageOutput:
    """int8 QDQ via ONNX Runtime's static quantizer, calibrated on real training images; accuracy measured in ORT."""
    from benchmarks.accuracy import onnx_accuracy, onnx_predict
    from exporters.onnx import export_onnx
    from pipeline.quantize.ort_static import output_sqnr, quantize_static

    cfg = ctx.cfg
    data = ctx.data()
    model, meta = _load(ctx, "finetune")
    shape = (meta["in_channels"], meta["input_size"], meta["input_size"])
    qat = _quantization_aware(ctx, model, data)
    if qat is not None:
        model, qat_metrics = qat
    fp32 = ctx.out_dir / "model.fp32.onnx"
    export_onnx(model, shape, fp32, opset=cfg.export.opset, simplify=cfg.export.simplify)
    rng = np.random.default_rng(cfg.seed)
    n_cal = min(cfg.quantize.calib_size, len(data.train.x))
    idx = np.sort(rng.choice(len(data.train.x), size=n_cal, replace=False))
    calib = data.train.x[idx].numpy().astype(np.float32)
    val_x = data.val.x.numpy().astype(np.float32)
    val_y = data.val.y.numpy() if data.val.y is not None else None
    fp32_val = onnx_accuracy(fp32, val_x, val_y) if val_y is not None else None
    eval_fn = (lambda p: onnx_accuracy(p, val_x, val_y)) if val_y is not None else None
    out = ctx.out_dir / "model.int8.onnx"
    qinfo = quantize_static(fp32, out, calib, cfg.quantize, eval_fn=eval_fn, fp32_accuracy=fp32_val)
    test_x = data.test.x.numpy().astype(np.float32)
    ref = onnx_predict(fp32, test_x)
    q = onnx_predict(out, test_x)
    metrics: dict[str, Any] = {
        "calibration_images": n_cal,
        "agreement": float((ref.argmax(1) == q.argmax(1)).mean()),
        "sqnr_db": float(output_sqnr(ref, q)),
        **{k: v for k, v in qinfo.items() if k != "guard"},
        "guard": qinfo.get("guard"),
    }
    if qat is not None:
        metrics["qat"] = qat_metrics
    if data.test.y is not None:
        y = data.test.y.numpy()
        metrics["fp32_test_accuracy"] = float((ref.argmax(1) == y).mean())
        metrics["test_accuracy"] = float((q.argmax(1) == y).mean())
    ctx.log.info("quantize: int8 test accuracy %s, top-1 agreement %.4f, SQNR %.1f dB",
                 metrics.get("test_accuracy"), metrics["agreement"], metrics["sqnr_db"])
    return StageOutput(["model.fp32.onnx", "model.int8.onnx"], metrics)


# ---------------------------------------------------------------------------------------------------------------- 04
@stage("entropy-code", section="entropy", version=9, deliverables={"weights.lrdc": "weights.lrdc"})
def entropy_code(ctx: StageContext) -> StageOutput:
    """Pack the int8 model (graph + every tensor) into the coded container; verify it decodes to identical outputs."""
    from benchmarks.accuracy import onnx_predict
    from pipeline.artifacts import atomic_write_json
    from pipeline.entropy.container import pack_onnx, unpack_to_onnx

    cfg = ctx.cfg
    data = ctx.data()
    src = ctx.inputs["quantize"].path("model.int8.onnx")
    out = ctx.out_dir / "weights.lrdc"
    stats = pack_onnx(src, out, coder=cfg.entropy.coder, zstd_level=cfg.entropy.zstd_level)
    from benchmarks.decode_timing import time_container

    stats.update(time_container(out))  # decode/read speeds: measured here, kept out of the hashed stats
    rebuilt = ctx.out_dir / "unpacked.int8.onnx"
    unpack_to_onnx(out, rebuilt)
    x = data.test.x[:64].numpy().astype(np.float32)
    a, b = onnx_predict(src, x), onnx_predict(rebuilt, x)
    if not np.array_equal(a, b):
        raise ValidationError(f"entropy-code: unpacked model outputs differ from {src.name} (max abs {np.abs(a - b).max()})")
    rebuilt.unlink()
    # Timings vary run to run: they go to the metrics, never into hashed files (reproducible artifact hashes).
    # Absolute paths (the temp folder) neither: the stats name the file relative to the stage folder.
    unhashed = ("decode_mb_s", "read_mb_s", "decode_mb_s_by_coder", "file")
    atomic_write_json(ctx.out_dir / "container_stats.json",
                      {"file": out.name, **{k: v for k, v in stats.items() if k not in unhashed}})
    metrics = {k: v for k, v in stats.items() if k != "tensors"}
    metrics["file"] = out.name
    metrics["outputs_identical"] = True
    ctx.log.info("entropy-code: %s, %d bytes, %.3f bits/weight (order-0 bound %.3f)", out.name, stats["size_bytes"],
                 stats.get("total_bits_per_weight", float("nan")), stats.get("order0_bits_per_weight", float("nan")))
    return StageOutput(["weights.lrdc", "container_stats.json"], metrics)


# ---------------------------------------------------------------------------------------------------------------- 05
@stage(
    "export",
    section="export",
    version=1,
    deliverables={"model.onnx": "model.onnx", "model.ort": "model.ort", "required_operators.config": "required_operators.config"},
)
def export(ctx: StageContext) -> StageOutput:
    """fp32 ONNX of the original, factorized and finetuned models with ORT-vs-torch parity; ORT format for mobile.

    For a graph-only model (ONNX fallback) "torch" is the stored graph run by ORT, so parity checks what the export
    changed (opset conversion, onnxsim, Flatten -> Reshape, dynamic batch).
    """
    from exporters.onnx import export_onnx
    from exporters.ort_mobile import convert_to_ort, mobile_usability
    from exporters.validate import check_parity
    from pipeline.artifacts import atomic_write_json

    cfg = ctx.cfg
    rng = np.random.default_rng(cfg.seed)
    metrics: dict[str, Any] = {}
    files: list[str] = []
    for stage_name, fname in (("finetune", "model.onnx"), ("baseline", "original.onnx"), ("factorize", "factorized.onnx")):
        model, meta = _load(ctx, stage_name)
        shape = (meta["in_channels"], meta["input_size"], meta["input_size"])
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


# ---------------------------------------------------------------------------------------------------------------- 06
@stage(
    "benchmark",
    section="benchmark",
    version=1,
    deliverables={"report.md": "report.md", "report.json": "report.json", "report.html": "report.html"},
)
def benchmark(ctx: StageContext) -> StageOutput:
    """Measure every variant in one run (accuracy, size, MACs, latency) and write the report."""
    from pipeline.report_builder import build_report

    paths = build_report(ctx)
    return StageOutput([p.name for p in paths.values()], {"report": {k: p.name for k, p in paths.items()}})
