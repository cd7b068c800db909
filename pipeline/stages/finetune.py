"""Stage 02, finetune: recover accuracy (distillation or a training method), then the optional quantization-aware
finetune (``quantize.qat_epochs``), so the checkpoint this stage writes is the one fp32 model every later stage uses.
"""
from __future__ import annotations

import dataclasses

from pipeline.artifacts import atomic_write_json
from pipeline.card import ModelCard
from pipeline.checkpoint import load_model, save_model
from pipeline.factorize.swap import count_macs_params
from pipeline.finetune import FinetuneJob, FinetuneResult, finetune as run_finetune
from pipeline.quantize.qat import qat_finetune
from pipeline.stage_api import DATASET, Not, StageContext, StageOutput, stage
from pipeline.stages._common import accuracy, check_finite, example_input, is_graph, load, macs_params, seed
from pipeline.stages._heads import card_heads, distill_heads, fidelity, summary, torch_outputs, uses_heads

FINETUNE_SKIPPED = ("the model exists only as an ONNX graph (the torch importer cannot convert it), which cannot be "
                    "trained; the factorized graph is used as is")

# QAT trains for the storage grid of quantize.weight_bits; it lives here so that export's fp32 model is the QAT one.
# Its rate and grid count only when it runs: a weight_bits change without QAT must not retrain the finetune.
QAT_READS = ("quantize.qat_lr", "quantize.weight_bits")


@stage("finetune", reads=("finetune", DATASET, "factorize.align", "benchmark.max_drop", "quantize.qat_epochs"),
       inputs=("baseline", "factorize"), version=3, reads_when=(("quantize.qat_epochs", Not(0), QAT_READS),))
def run(ctx: StageContext) -> StageOutput:
    """Recover accuracy (distillation from the original by default, or a training method of the source papers)."""
    data = ctx.data()
    student, card = load(ctx, "factorize")
    labels = ctx.inputs["baseline"].metrics.get("labels", "dataset")
    if is_graph(student):
        return _skip(ctx, student, card, labels)
    teacher, _ = load(ctx, "baseline")
    seed(ctx.cfg.seed)
    if uses_heads(card):
        return _distil_heads(ctx, student, teacher, card, labels)
    job = FinetuneJob(
        student=student,
        teacher=teacher,
        structure=dict(card.structure),
        data=data,
        cfg=ctx.cfg.finetune,
        seed=ctx.cfg.seed,
        device=ctx.cfg.device,
        progress=ctx.progress,
        example_input=example_input(card),
        align=ctx.cfg.factorize.align,
        model_spec=ctx.cfg.model,
    )
    result, val = _train(ctx, job)
    result, card, backoff = _search_backoff(ctx, job, result, val, card)
    model = result.model.cpu().eval()
    qat = _quantization_aware(ctx, model, data)
    if qat is not None:
        model, qat_metrics = qat
    check_finite(model, "finetune")
    card = card.with_structure(result.structure)
    files = save_model(model, card, ctx.out_dir)
    atomic_write_json(ctx.out_dir / "history.json", result.history)
    macs, params = count_macs_params(model, example_input(card))
    metrics = {
        "method": ctx.cfg.finetune.method,
        "labels": labels,
        "test_accuracy": accuracy(model, data.test),
        "val_accuracy": accuracy(model, data.val),
        "macs": macs,
        "params": params,
        **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str, bool, list, dict, type(None)))},
    }
    if qat is not None:
        metrics["qat"] = qat_metrics
    if backoff:
        metrics["search_backoff"] = backoff
    ctx.log.info("finetune (%s): test accuracy %.4f", metrics["method"], metrics["test_accuracy"])
    return StageOutput(files + ["history.json"], metrics)


def _misses_budget(ctx: StageContext, val: float) -> bool:
    """Whether validation accuracy ``val`` is more than ``benchmark.max_drop`` under the original's (False when the
    original's validation accuracy is unknown)."""
    base = ctx.inputs["baseline"].metrics.get("val_accuracy")
    if not isinstance(base, (int, float)) or base != base:
        return False
    return base - val > ctx.cfg.benchmark.max_drop


def _train(ctx: StageContext, job: FinetuneJob) -> tuple[FinetuneResult, float]:
    """Run the configured method, then the extension: while the result misses ``benchmark.max_drop`` on
    validation, ``finetune.extra_epochs`` more KD epochs from the result (one more cosine cycle from
    ``finetune.lr``, a new data order). Hard data needs more epochs than easy data at the same compression (resnet20
    on shapes at 4.56x fewer MACs: -2.8 points after 4 epochs, -0.6 after 15), and the budget tells which case this
    is; a model that meets it after ``finetune.epochs`` costs nothing more. ``kd`` keeps its starting weights when no
    epoch beats them, so the extension never lowers validation accuracy. Its record is ``metrics["extension"]``.
    Returns the result and its validation accuracy (measured once here, reused by the search back-off)."""
    result = run_finetune(job)
    val = accuracy(result.model.cpu().eval(), job.data.val)
    extra = job.cfg.extra_epochs
    if extra <= 0 or job.cfg.method == "none" or not _misses_budget(ctx, val):
        return result, val
    ctx.log.warning("finetune: val accuracy %.4f after %d epochs misses max_drop %.3f; %d more KD epochs "
                    "(finetune.extra_epochs)", val, job.cfg.epochs, ctx.cfg.benchmark.max_drop, extra)
    seed(ctx.cfg.seed + 1)
    more = run_finetune(dataclasses.replace(
        job, student=result.model, structure=dict(result.structure), seed=job.seed + 1,
        cfg=dataclasses.replace(job.cfg, method="kd", epochs=extra)))
    after = accuracy(more.model.cpu().eval(), job.data.val)
    metrics = dict(result.metrics)
    metrics["extension"] = {"epochs": extra, "val_before": val, "val_after": after,
                            "seconds": more.metrics.get("seconds")}
    metrics["best_val"] = max(float(result.metrics.get("best_val", val)), after)
    if isinstance(result.metrics.get("seconds"), (int, float)) and isinstance(more.metrics.get("seconds"),
                                                                               (int, float)):
        metrics["seconds"] = result.metrics["seconds"] + more.metrics["seconds"]
    history = {**result.history, "extension": more.history}
    return dataclasses.replace(more, history=history, metrics={**more.metrics, **metrics}), after


def _search_backoff(ctx: StageContext, job: FinetuneJob, result: FinetuneResult, val: float, card: ModelCard):
    """The rank search's safety net: while the finetuned model's validation accuracy (``val``) misses
    ``benchmark.max_drop`` against the original's, train the next milder level the search kept (``fallback-<k>/``
    of the factorize stage) and keep the first that meets it (else the most accurate). Returns ``(result, card,
    tries)``; ``tries`` is empty when the first level met the budget or no search ran."""
    search = ctx.inputs["factorize"].metrics.get("search") or {}
    fractions = search.get("fallback_fractions") or []
    base = ctx.inputs["baseline"].metrics.get("val_accuracy")
    if not fractions or not isinstance(base, (int, float)) or base != base:
        return result, card, []
    tries = [{"fraction": search["chosen_fraction"], "val_accuracy": val, "kept": False,
              "extended": "extension" in result.metrics}]
    best = (val, result, card, 0)
    for k, frac in enumerate(fractions, start=1):
        if not _misses_budget(ctx, best[0]):
            break
        ctx.log.warning("finetune: val accuracy %.4f misses max_drop %.3f against the original's %.4f at %.3f of "
                        "the MACs; training the search's next milder level (%.3f)", best[0],
                        ctx.cfg.benchmark.max_drop, base,
                        tries[-1]["fraction"], frac)
        student, fcard = load_model(ctx.inputs["factorize"].dir / f"fallback-{k}")
        seed(ctx.cfg.seed)
        res, val = _train(ctx, dataclasses.replace(job, student=student, structure=dict(fcard.structure)))
        tries.append({"fraction": frac, "val_accuracy": val, "kept": False, "extended": "extension" in res.metrics})
        if val > best[0]:
            best = (val, res, fcard, k)
    if len(tries) == 1:
        return result, card, []
    tries[best[3]]["kept"] = True
    return best[1], best[2], tries


def _distil_heads(ctx: StageContext, student, teacher, card: ModelCard, labels: str) -> StageOutput:
    """Outputs that are not one classifier (maps, sequences, embeddings, several): distil from the original's raw
    outputs per head, whatever ``finetune.method`` says (its losses need class labels), and measure fidelity."""
    data = ctx.data()
    heads = card_heads(card)
    if ctx.cfg.finetune.method not in ("kd", "none"):
        ctx.log.warning("finetune: method %s needs class labels; the model's outputs are %s, so it is distilled "
                        "from the original's raw outputs instead", ctx.cfg.finetune.method,
                        ", ".join(h.kind for h in heads))
    if ctx.cfg.quantize.qat_epochs > 0:
        ctx.log.warning("finetune: quantization-aware training needs class labels; skipped for %s outputs",
                        ", ".join(h.kind for h in heads))
    cfg = ctx.cfg.finetune
    if cfg.method == "none":
        cfg = dataclasses.replace(cfg, epochs=0)
    model, history = distill_heads(student, teacher, heads, data.train, data.val, cfg, ctx.cfg.seed,
                                   ctx.cfg.device)
    model = model.cpu().eval()
    check_finite(model, "finetune")
    ref = torch_outputs(teacher.cpu(), data.test.x, heads)
    entries = fidelity(heads, ref, torch_outputs(model, data.test.x, heads))
    files = save_model(model, card, ctx.out_dir)
    atomic_write_json(ctx.out_dir / "history.json", history)
    macs, params = count_macs_params(model, example_input(card))
    metrics = {
        "method": "distill_heads" if cfg.method != "none" else "none",
        "configured_method": ctx.cfg.finetune.method,
        "labels": labels,
        "test_accuracy": float("nan"),
        "val_accuracy": float("nan"),
        "fidelity": entries,
        "best_val_loss": history["best_val_loss"],
        "seconds": history["seconds"],
        "macs": macs,
        "params": params,
    }
    ctx.log.info("finetune (distillation per head): test fidelity %s", summary(entries))
    return StageOutput(files + ["history.json"], metrics)


def _quantization_aware(ctx: StageContext, model, data):
    """``quantize.qat_epochs > 0``: distil the model with its conv weights fake-quantized to ``weight_bits``.

    Returns ``(model, metrics)``, or None when QAT is off. The model export writes (and quantize quantizes) then
    carries weights already on the b-bit grids, so the quantizer's snap changes almost nothing.
    """
    qcfg = ctx.cfg.quantize
    if qcfg.qat_epochs <= 0:
        return None
    # weight_bits is 2..7 here: build_config rejects qat_epochs > 0 with any other value
    teacher, _ = load(ctx, "baseline")  # a fresh copy: the finetune method may have moved or frozen its teacher
    seed(ctx.cfg.seed)
    trained, hist = qat_finetune(model, teacher, data, int(qcfg.weight_bits), qcfg.qat_epochs, qcfg.qat_lr,
                                 ctx.cfg.finetune, seed=ctx.cfg.seed, device=ctx.cfg.device, progress=ctx.progress)
    metrics = {"bits": int(qcfg.weight_bits), "epochs": qcfg.qat_epochs, "val_before": hist["val_before"],
               "best_val": hist["best_val"]}
    ctx.log.info("finetune: %d-bit QAT, val accuracy %.4f -> %.4f", metrics["bits"], metrics["val_before"],
                 metrics["best_val"])
    return trained, metrics


def _skip(ctx: StageContext, model, card: ModelCard, labels: str) -> StageOutput:
    """Finetune stage for a graph-only model: nothing to train (QAT neither), so pass the graph on and say why."""
    data = ctx.data()
    ctx.log.warning("finetune skipped (finetune.method=%s): %s", ctx.cfg.finetune.method, FINETUNE_SKIPPED)
    if ctx.cfg.quantize.qat_epochs > 0:
        ctx.log.warning("finetune: quantization-aware training skipped: the model is an ONNX graph without torch layers")
    files = save_model(model, card, ctx.out_dir)
    atomic_write_json(ctx.out_dir / "history.json", {"epochs": [], "skipped": FINETUNE_SKIPPED})
    macs, params = macs_params(model, card, ctx.out_dir)
    metrics = {
        "method": "skipped",
        "configured_method": ctx.cfg.finetune.method,
        "skipped": True,
        "skip_reason": FINETUNE_SKIPPED,
        "labels": labels,
        "test_accuracy": accuracy(model, data.test),
        "val_accuracy": accuracy(model, data.val),
        "macs": macs,
        "params": params,
    }
    return StageOutput(files + ["history.json"], metrics)
