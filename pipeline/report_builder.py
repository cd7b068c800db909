"""Assemble the benchmark stage's report from the run's artifacts: every number measured in this one run."""
from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from benchmarks.accuracy import onnx_accuracy
from benchmarks.energy import energy_proxy, onnx_layer_stats, roofline_all
from benchmarks.latency import measure_latency, profile_nodes
from benchmarks.report import write_report
from benchmarks.report.reach import reach_section
from benchmarks.storage import artifact_bytes
from benchmarks.targets import TARGETS
from pipeline import __version__
from pipeline.checkpoint import load_card
from pipeline.entropy.container import unpack_to_onnx
from pipeline.pseudo_labels import NOTE, PSEUDO
from pipeline.stage_api import StageContext
from pipeline.fidelity_gate import apply_gate, labelled_head, measure_fidelity, model_heads

#: config of other stages the report's "settings" block records (the benchmark stage declares these as reads)
REPORT_READS = (
    "factorize.method", "factorize.selector", "factorize.energy", "factorize.align",
    "finetune.method", "finetune.epochs",
    "quantize.activation_type", "quantize.weight_type", "quantize.per_channel", "quantize.calibrate_method",
)


def _variant_files(ctx: StageContext) -> dict[str, Path]:
    """The graph measured per variant: for finetuned and int8 the file that ships (baked when quantize baked it)."""
    exp, q = ctx.inputs["export"], ctx.inputs["quantize"]
    shipped = q.metrics.get("shipped") or {}
    return {
        "original": exp.path("original.onnx"),
        "factorized": exp.path("factorized.onnx"),
        "finetuned": q.path(shipped["model.onnx"]) if "model.onnx" in shipped and q.metrics.get("baked")
        else exp.path("model.onnx"),
        "int8": q.path(shipped.get("model.int8.onnx", "model.int8.onnx")),
    }


#: variant -> the .onnx name it ships as (its .ort is that name with .ort)
_SHIPPED_AS = {"finetuned": "model.onnx", "int8": "model.int8.onnx"}


def _mobile(ctx: StageContext) -> dict[str, Any] | None:
    """quantize's mobile.json (the mobile files made from the shipped graphs), if ``export.mobile`` made them."""
    p = ctx.inputs["quantize"].dir / "mobile.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _shipped_ort(ctx: StageContext, mobile: dict[str, Any] | None) -> dict[str, tuple[Path, dict[str, str]]]:
    """``{variant: (shipped .ort, its session options)}``: what the mobile-* latency targets time."""
    out: dict[str, tuple[Path, dict[str, str]]] = {}
    for variant, onnx_name in _SHIPPED_AS.items():
        ort_name = Path(onnx_name).with_suffix(".ort").name
        entry = (mobile or {}).get("ort", {}).get(ort_name)
        if entry is not None:
            out[variant] = (ctx.inputs["quantize"].path(ort_name), dict(entry.get("session_config") or {}))
    return out


def weight_bits_summary(wb: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The int8 model's weight widths for the report: mode, grid, average, how many layers at each width, the fit."""
    if not wb:
        return None
    widths: dict[str, int] = {}
    for b in (wb.get("bits") or {}).values():
        widths[str(b)] = widths.get(str(b), 0) + 1
    fit = {k: v for k, v in (wb.get("fit") or {}).items()
           if k in ("kept_8bit", "floor", "base_accuracy", "step", "path_length", "probes", "tries", "seconds",
                    "estimated_coded_bytes", "estimated_8bit_bytes", "check_drop", "check_base",
                    "check_accuracy", "sensitivity_source")}
    return {"mode": wb.get("mode"), "grid": wb.get("grid"), "avg_bits": wb.get("avg_bits"), "budget": wb.get("budget"),
            "accuracy": wb.get("accuracy"), "widths": dict(sorted(widths.items(), key=lambda kv: -int(kv[0]))),
            **({"fit": fit} if fit else {})}


def _notes(base: dict[str, Any], fin: dict[str, Any]) -> list[str]:
    """What a reader must know to read the numbers right (pseudo-labels, unnormalised inputs, skipped stages)."""
    notes = []
    if base.get("labels") == PSEUDO:
        notes.append(f"Labels: {PSEUDO}. {NOTE}.")
    if base.get("inputs"):
        notes.append(f"Inputs: {base['inputs']}, as the imported ONNX model expects them.")
    if base.get("onnx_fallback"):
        notes.append(f"ONNX graph fallback: {base['onnx_fallback']}; convolutions were factorized on the ONNX graph.")
    tries = fin.get("search_backoff") or []  # the searched level first, then each milder level trained
    backoff = [t for t in tries[1:] if t.get("kept")]
    if backoff:  # what ships is a milder level than the searched one the "factorized" row shows
        notes.append(f"Rank search back-off: the searched level missed max_drop after finetuning, so the finetuned "
                     f"and int8 variants are the milder level {backoff[-1]['fraction']:g} of the MACs; the "
                     f"'factorized' row is the searched level before finetuning.")
    ext = fin.get("extension")
    if isinstance(ext, dict):  # the first training missed max_drop on validation, so it trained longer
        notes.append(f"Finetune extension: validation accuracy {ext.get('val_before', float('nan')):.4f} after the "
                     f"configured epochs missed max_drop, so {ext.get('epochs')} more KD epochs were trained "
                     f"(finetune.extra_epochs): {ext.get('val_after', float('nan')):.4f}.")
    if fin.get("skipped"):
        notes.append(f"Finetuning skipped (finetune.method={fin.get('configured_method')}): {fin.get('skip_reason')}.")
    return notes


def build_report(ctx: StageContext) -> dict[str, Path]:
    """Measure accuracy, size, MACs/params, energy proxy and latency of each variant; write report.{json,md,html}.

    Returns:
        ``{"json": path, "md": path, "html": path}`` (html only when enabled).
    """
    cfg = ctx.cfg
    bcfg = cfg.benchmark
    data = ctx.data()
    card = load_card(ctx.inputs["baseline"].dir)
    shape = card.input_shape
    target = TARGETS.get(bcfg.target)
    files = _variant_files(ctx)
    mobile = _mobile(ctx)
    container = ctx.inputs["entropy-code"].path("weights.lrdc")
    x = data.test.x.numpy().astype(np.float32)
    y_all = data.test.y.numpy() if data.test.y is not None else None
    y = y_all if data.test.class_labels else None  # top-1 needs class labels; maps / sequences are scored per head
    baked = bool(ctx.inputs["quantize"].metrics.get("baked"))
    # A baked graph is fed what an app feeds it: raw [0, 1] pixels, i.e. the normalised test images un-normalised.
    raw = x * np.asarray(card.std, np.float32).reshape(1, -1, 1, 1) + np.asarray(card.mean, np.float32).reshape(1, -1, 1, 1)
    feeds = {n: (raw if baked and n in _SHIPPED_AS else x) for n in files}

    ctx.log.info("benchmark: timing %d variants interleaved (%d samples each, %d thread(s))", len(files), bcfg.samples, bcfg.threads)
    lat = measure_latency(files, target, shape, batch=bcfg.batch, samples=bcfg.samples, warmup=bcfg.warmup,
                          threads=bcfg.threads, seed=cfg.seed, shipped_ort=_shipped_ort(ctx, mobile), raw=True)
    raw_ms = {n: lat[n].pop("samples_ms") for n in lat}  # for the gate's ratio interval, not the report
    card = load_card(ctx.inputs["baseline"].dir)
    variants: list[dict[str, Any]] = []
    original_layers: list[dict[str, Any]] = []
    for name, path in files.items():
        stats = onnx_layer_stats(path, shape)
        if name == "original":
            original_layers = stats["layers"]
        precision = "int8" if name == "int8" else "fp32"
        v = {
            "name": name,
            "file": str(path.relative_to(ctx.out_dir.parent)),
            "accuracy": float(onnx_accuracy(path, feeds[name], y)) if y is not None else None,
            "size_bytes": int(artifact_bytes(path)),
            "macs": int(stats["macs"]),
            "params": int(stats["params"]),
            "latency_ms": lat[name],
            "energy": energy_proxy(stats, target.profile, precision=precision),
            "roofline": roofline_all(stats, precision="graph"),
        }
        if baked and name in _SHIPPED_AS:
            v["input"] = "raw [0, 1] pixels (normalisation baked into the graph)"
        variants.append(v)
        if ctx.progress:  # one line per variant: the accuracy pass over the test split is the slow part
            ctx.log.info("benchmark: variant %s (%d/%d): accuracy %s, %d bytes, p50 %.3f ms", name, len(variants),
                         len(files), "n/a" if v["accuracy"] is None else f"{v['accuracy']:.4f}", v["size_bytes"],
                         float(lat[name].get("p50") or 0.0))
    # The container is what ships: its accuracy is that of the model `unpack` rebuilds from it.
    with tempfile.TemporaryDirectory(dir=ctx.out_dir) as td:
        rebuilt = Path(td) / "unpacked.onnx"
        unpack_to_onnx(container, rebuilt)
        int8 = next(v for v in variants if v["name"] == "int8")
        variants.append(
            {
                "name": "unpacked",
                "file": str(container.relative_to(ctx.out_dir.parent)),
                "accuracy": float(onnx_accuracy(rebuilt, x, y)) if y is not None else None,
                "size_bytes": int(container.stat().st_size),
                "macs": int8["macs"],
                "params": int8["params"],
                "latency_ms": int8["latency_ms"],
                "note": "graph rebuilt by `lowrank-deploy unpack` from the container; latency is the int8 graph's",
            }
        )
        fid = measure_fidelity(card, {**files, "unpacked": rebuilt}, x, y_all)  # per head, against the original
    scored = labelled_head(model_heads(card), y_all) if y is None else None
    for v in variants:
        v["outputs"] = fid[v["name"]]
        if scored is not None:  # label maps / sequences: the variant's accuracy is that head's (mIoU, exact sequence)
            v["accuracy"] = v["outputs"][scored].get("accuracy")
    by = {v["name"]: v for v in variants}
    orig, ship = by["original"], by["int8"]
    headline = {
        "smaller": orig["size_bytes"] / by["unpacked"]["size_bytes"],
        "faster": orig["latency_ms"]["p50"] / ship["latency_ms"]["p50"],
        "faster_fp32": orig["latency_ms"]["p50"] / by["finetuned"]["latency_ms"]["p50"],
        "acc_from": orig["accuracy"],
        "acc_to": by["unpacked"]["accuracy"],
        "basis": "size: fp32 original ONNX vs entropy-coded container; speed: p50 of original fp32 vs int8 "
                 "(faster_fp32: vs decomposed fp32); accuracy: original vs model unpacked from the container",
    }
    # max_drop applied to every variant that could ship; raises FidelityGateError (nothing ships) when none passes
    gate = apply_gate(cfg.benchmark.max_drop, target.name, variants, fid, raw_ms, chunk=5)
    shipped = gate.shipped[target.name]
    headline.update({"text": gate.headline[target.name], "shipped": shipped.variant,
                     "shipped_speed_ratio": shipped.speed_ratio, "shipped_smaller": shipped.smaller})
    try:
        node_profile = profile_nodes(files["finetuned"], target, shape, runs=20)
    except Exception as e:  # profiling is a diagnostic: never fail the report on it
        node_profile = {"error": str(e)}
    fin = ctx.inputs["finetune"].metrics
    q = ctx.inputs["quantize"].metrics
    ent = ctx.inputs["entropy-code"].metrics
    base = ctx.inputs["baseline"].metrics
    report: dict[str, Any] = {
        "schema_version": 1,
        "model": cfg.model,
        "dataset": cfg.data,
        "settings": {
            "target": target.name,
            "target_note": getattr(target, "note", ""),
            "threads": bcfg.threads,
            "inter_threads": getattr(target, "inter_threads", 1),
            "graph_optimization": getattr(target, "graph_opt_level", "all"),
            "execution_mode": getattr(target, "execution_mode", "sequential"),
            "batch": bcfg.batch,
            "samples": bcfg.samples,
            "warmup": bcfg.warmup,
            "timing": "sessions created and warmed first, variants interleaved in random order in small chunks",
            "onnxruntime": ort.__version__,
            "package_version": __version__,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "factorize": {"method": cfg.factorize.method, "selector": cfg.factorize.selector,
                          "energy": cfg.factorize.energy, "align": cfg.factorize.align},
            "finetune": {"method": cfg.finetune.method, "epochs": cfg.finetune.epochs},
            "quantize": {"activation_type": cfg.quantize.activation_type, "weight_type": cfg.quantize.weight_type,
                         "per_channel": cfg.quantize.per_channel, "calibrate_method": cfg.quantize.calibrate_method},
            "energy_table": "Horowitz, ISSCC 2014, 45 nm 0.9 V (ratios matter, absolute values dated)",
            "device_profile": getattr(target.profile, "name", str(target.profile)),
        },
        "headline": headline,
        # what low rank can reach in this model, and the MAC-reduction cap the rest sets (first lines of md/html)
        "reach": reach_section(original_layers, ctx.inputs["factorize"].metrics),
        "variants": variants,
        "container": {"file": "weights.lrdc", "size_bytes": int(container.stat().st_size), **{
            k: v for k, v in ent.items() if k in ("coder", "total_bits_per_weight", "order0_bits_per_weight",
                                                  "table_bits_per_weight", "decode_mb_s", "read_mb_s")}, "streams": len(ent.get("streams", []))},
        "layers": json.loads((ctx.inputs["factorize"].dir / "layers.json").read_text()),
        "node_profile": node_profile,
        "gate": gate.as_dict(),
        "quantize": {**{k: v for k, v in q.items() if k in ("agreement", "sqnr_db", "excluded_nodes",
                                                            "calibration_images", "reduce_range")},
                     "weight_bits": weight_bits_summary(q.get("weight_bits"))},
        "finetune": {k: v for k, v in fin.items() if not isinstance(v, (list, dict))},
        "stages": [{"stage": a.stage, "key": a.key, "sha256": a.sha256} for a in ctx.inputs.values()],
    }
    report["settings"]["labels"] = base.get("labels", "dataset")
    if base.get("inputs"):
        report["settings"]["inputs"] = base["inputs"]
    search = ctx.inputs["factorize"].metrics.get("search")
    if search:  # the rank search's table and its time (selector=search), with any finetune back-off
        report["search"] = {**search, "backoff": fin.get("search_backoff") or []}
    notes = _notes(base, fin)
    if notes:
        report["notes"] = notes
    if mobile is not None:
        report["mobile"] = {k: v for k, v in mobile.items() if k != "log"}  # the checker logs stay in mobile.json
    paths = write_report(report, ctx.out_dir, html=bcfg.html)
    return {k: Path(p) for k, p in paths.items()}
