"""Stage 01, factorize: replace eligible conv/linear layers by low-rank forms and record the per-layer table."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch

from pipeline.artifacts import atomic_write_json
from pipeline.card import ModelCard
from pipeline.checkpoint import save_model
from pipeline.data import Split
from pipeline.factorize.graph_fallback import factorize_graph_checked
from pipeline.factorize.plan import out_of_reach_macs
from pipeline.factorize.search import SearchResult, search_ranks
from pipeline.factorize.swap import count_macs_params, factorize_model
from pipeline.fidelity_gate import model_heads
from pipeline.finetune.layerwise import layerwise_reconstruct
from pipeline.finetune.trainer import evaluate
from pipeline.models.ort_graph import OrtGraphModel
from pipeline.stage_api import DATASET, StageContext, StageOutput, stage
from pipeline.stages._search import distill_probe, model_timer
from pipeline.stages._common import EVAL_BATCH, accuracy, check_finite, example_input, is_graph, load, macs_params, \
    seed


#: images the graph path's fidelity check runs on: the first validation images and a seeded few training images
CHECK_VAL, CHECK_TRAIN = 96, 32


#: what the rank search (selector=search) reads beyond the factorize section: the probe's distillation settings,
#: the export settings of the graphs it times, and the target it times them on
SEARCH_READS = ("finetune.batch_size", "finetune.lr", "finetune.optimizer", "finetune.weight_decay",
                "finetune.temperature", "finetune.alpha", "export.opset", "export.simplify", "benchmark.target",
                "benchmark.threads")


@stage("factorize", reads=("factorize", DATASET, "benchmark.max_drop"), inputs=("baseline",), version=3,
       deliverables={"layers.json": "factorize_layers.json"},
       reads_when=(("factorize.selector", "search", SEARCH_READS),))
def run(ctx: StageContext) -> StageOutput:
    """Replace eligible conv/linear layers by low-rank forms; record the per-layer table."""
    data = ctx.data()
    model, card = load(ctx, "baseline")
    if is_graph(model):
        return _factorize_graph(ctx, model, card)
    check_finite(model, "factorize input")
    seed(ctx.cfg.seed)
    # Sensitivity for the budget selector is measured on a small, fixed validation subset.
    n_eval = min(len(data.val.x), ctx.cfg.factorize.budget.eval_samples)
    sub = Split(data.val.x[:n_eval], data.val.y[:n_eval] if data.val.y is not None else None)
    eval_fn = (lambda m: float(evaluate(m, sub, batch_size=EVAL_BATCH))) if sub.class_labels else None
    calib = _calibration_images(ctx, data)
    fcfg = ctx.cfg.factorize
    t0 = time.perf_counter()
    search = None
    if fcfg.selector == "search":
        search = search_ranks(model, fcfg, example_input(card), eval_fn=eval_fn,
                              calib_images=calib if fcfg.objective == "outputs" else None,
                              time_models=model_timer(ctx.cfg, card.input_shape),
                              probe=distill_probe(ctx.cfg, model, data) if data.train.class_labels else None,
                              base_val=accuracy(model, data.val) if data.val.class_labels else None, log=ctx.log)
        fact, layers, structure = search.model, search.layers, search.structure
    else:
        fact, layers, structure = factorize_model(model, fcfg, example_input(card), eval_fn=eval_fn,
                                                  calib_images=calib if fcfg.objective == "outputs" else None)
    seconds = time.perf_counter() - t0
    layerwise, tuned_layers = _layerwise(ctx, model, fact, structure, calib)
    fact.eval()
    files = save_model(fact, card.with_structure(structure), ctx.out_dir)
    rows = [asdict(r) for r in layers]
    for row in rows:  # the layer-wise finetune's relative output MSE of each layer it trained
        tuned = tuned_layers.get(row["name"])
        if tuned is not None:
            row["layerwise_mse"] = [tuned["mse_before"], tuned["mse_after"]]
    atomic_write_json(ctx.out_dir / "layers.json", rows)
    macs0, params0 = count_macs_params(model, example_input(card))
    macs1, params1 = count_macs_params(fact, example_input(card))
    metrics = {**_metrics(rows, (macs0, params0), (macs1, params1), fact, data, seconds), **layerwise}
    if search is not None:
        metrics["search"] = search.summary()
        files += _save_fallbacks(ctx, search, card, model, calib)
    ctx.log.info(
        "factorize: %d layers factorized, MACs %.1fM -> %.1fM (%.2fx), accuracy before finetune %.4f",
        metrics["layers_factorized"], macs0 / 1e6, macs1 / 1e6, metrics["mac_reduction"], metrics["test_accuracy"],
    )
    return StageOutput(files + ["layers.json"], metrics)


def _save_fallbacks(ctx: StageContext, search: SearchResult, card: ModelCard, dense, calib) -> list[str]:
    """The search's milder levels, each in ``fallback-<k>/`` (layer-wise tuned like the chosen one), for the
    finetune stage to train when the chosen level misses ``benchmark.max_drop``."""
    files = []
    for k, (fb, _, structure) in enumerate(search.fallbacks, start=1):
        _layerwise(ctx, dense, fb, structure, calib)
        sub = f"fallback-{k}"
        files += [f"{sub}/{f}" for f in save_model(fb.eval(), card.with_structure(structure), ctx.out_dir / sub)]
    return files


def _metrics(rows: list[dict[str, Any]], before: tuple[int, int], after: tuple[int, int], fact, data,
             seconds: float) -> dict[str, Any]:
    """The factorize stage's metrics, shared by the torch and the ONNX-graph paths."""
    return {
        "layers_factorized": sum(r["status"] == "factorized" for r in rows),
        "layers_dense": sum(r["status"] != "factorized" for r in rows),
        "macs_before": before[0],
        "macs_after": after[0],
        "mac_reduction": before[0] / max(after[0], 1),
        "params_before": before[1],
        "params_after": after[1],
        "test_accuracy": accuracy(fact, data.test),
        "val_accuracy": accuracy(fact, data.val),
        "seconds": round(seconds, 3),
        "layers_fallen_back": 0,  # the graph path counts the layers its fidelity check moved to higher rank
        **out_of_reach_macs(rows),  # MACs in depthwise/grouped layers: what low rank cannot touch caps the reduction
    }


def _layerwise(ctx: StageContext, dense, fact, structure: dict[str, Any],
               calib: torch.Tensor | None) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Layer-wise reconstruction finetune (``factorize.layerwise_steps`` > 0): each factorized layer trained to match
    the dense layer's outputs on the calibration images, in place. Returns its stage metrics and the per-layer
    report of :func:`layerwise_reconstruct` (both empty when off)."""
    fcfg = ctx.cfg.factorize
    if fcfg.layerwise_steps <= 0 or not structure or calib is None:
        return {}, {}
    t0 = time.perf_counter()
    # sequential: each layer's inputs come from the already tuned factorized predecessors (errors do not compound)
    report = layerwise_reconstruct(dense, fact, list(structure), calib, steps=int(fcfg.layerwise_steps),
                                   lr=float(fcfg.layerwise_lr), max_images=int(fcfg.calib_images),
                                   propagate=bool(fcfg.sequential), seed=int(ctx.cfg.seed))
    seconds = time.perf_counter() - t0
    before = sum(r["mse_before"] for r in report.values()) / len(report)
    after = sum(r["mse_after"] for r in report.values()) / len(report)
    ctx.log.info("factorize: layer-wise reconstruction, %d layers x %d steps in %.1f s, mean relative output MSE "
                 "%.4f -> %.4f", len(report), fcfg.layerwise_steps, seconds, before, after)
    return {"layerwise": {"layers": len(report), "steps": int(fcfg.layerwise_steps), "seconds": round(seconds, 3),
                          "mse_before": before, "mse_after": after}}, report


def _calibration_images(ctx: StageContext, data) -> torch.Tensor | None:
    """Training images for the output objective (``factorize.objective=outputs``) and the layer-wise finetune
    (``factorize.layerwise_steps``): a seeded subset, as the model sees them (the loaders normalise); None when
    neither is on (the weight-space objective needs no data)."""
    fcfg = ctx.cfg.factorize
    if fcfg.objective != "outputs" and fcfg.layerwise_steps <= 0:
        return None
    n = min(len(data.train.x), int(fcfg.calib_images))
    idx = torch.randperm(len(data.train.x), generator=torch.Generator().manual_seed(int(ctx.cfg.seed)))[:n]
    return data.train.x[idx]


def _check_images(ctx: StageContext, data) -> torch.Tensor:
    """The graph path's fidelity-check images: the first :data:`CHECK_VAL` validation images and a seeded
    :data:`CHECK_TRAIN` training images (some of the data the original will be measured on, some it was not)."""
    n = min(len(data.train.x), CHECK_TRAIN)
    idx = torch.randperm(len(data.train.x), generator=torch.Generator().manual_seed(int(ctx.cfg.seed) + 1))[:n]
    return torch.cat([data.val.x[:CHECK_VAL], data.train.x[idx]])


def _factorize_graph(ctx: StageContext, model, card: ModelCard) -> StageOutput:
    """Factorize stage for a graph-only model: its Conv nodes rewritten on the graph, ranks raised where the whole
    graph's measured output fidelity needs it (pipeline.factorize.graph_fallback)."""
    data = ctx.data()
    calib = _calibration_images(ctx, data)
    check = _check_images(ctx, data)
    t0 = time.perf_counter()
    if ctx.cfg.factorize.objective != "outputs":
        calib = None  # the layer-wise finetune trains torch modules: a graph-only model has none
    res = factorize_graph_checked(model.proto, ctx.cfg.factorize, card.input_shape, model_heads(card),
                                  check.numpy().astype("float32"), ctx.cfg.benchmark.max_drop,
                                  calib_images=None if calib is None else calib.numpy().astype("float32"),
                                  log=ctx.log)
    seconds = time.perf_counter() - t0
    fact = OrtGraphModel.from_proto(res.model, source=model.source)
    card = card.with_structure(res.structure)
    files = save_model(fact, card, ctx.out_dir)
    rows = [{**asdict(r), "fallback": res.fallbacks.get(r.name, "")} for r in res.rows]
    atomic_write_json(ctx.out_dir / "layers.json", rows)
    macs0, params0 = macs_params(model, card, ctx.inputs["baseline"].dir)
    macs1, params1 = macs_params(fact, card, ctx.out_dir)
    metrics = {"form": "onnx_graph", **_metrics(rows, (macs0, params0), (macs1, params1), fact, data, seconds),
               "layers_fallen_back": len(res.fallbacks), "fidelity_check": res.summary()}
    if not res.passed:
        ctx.log.warning("factorize (ONNX graph): the graph misses the fidelity check even with every layer dense "
                        "(%s); the benchmark's gate decides", "; ".join(c["output"] + " " + c["metric"]
                                                                         for c in res.checks if not c["passed"]))
    ctx.log.info("factorize (ONNX graph): %d Conv nodes factorized (%d fell back to higher rank or dense for "
                 "fidelity, %d check rounds on %d images), MACs %.1fM -> %.1fM (%.2fx), accuracy %.4f",
                 metrics["layers_factorized"], len(res.fallbacks), res.rounds, res.images, macs0 / 1e6, macs1 / 1e6,
                 metrics["mac_reduction"], metrics["test_accuracy"])
    return StageOutput(files + ["layers.json"], metrics)
