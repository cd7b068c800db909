"""Stage 00, baseline: build the model and load the user's weights or ONNX file, or train it on the dataset."""
from __future__ import annotations

from typing import Any

import torch

from pipeline import pseudo_labels
from pipeline.artifacts import atomic_write_json
from pipeline.card import ModelCard
from pipeline.checkpoint import save_model
from pipeline.errors import InputError
from pipeline.finetune.trainer import train_baseline
from pipeline.fidelity_gate import labelled_head
from pipeline.heads.accuracy import label_accuracy
from pipeline.heads.kinds import HeadSpec
from pipeline.heads.measure import onnx_outputs, probe_onnx_heads
from pipeline.models import build_model, class_count_from_weights, load_onnx_model, load_weights, onnx_model_info
from pipeline.models.sanity import check_min_input
from pipeline.models.user_code import check_exportable
from pipeline.spec import FILE, ModelSpec
from pipeline.stage_api import DATASET, StageContext, StageOutput, stage
from pipeline.stages._common import EVAL_BATCH, accuracy, check_finite, macs_params, seed


def _check_onnx_fits(cfg, info: dict[str, Any], data) -> None:
    """Raise InputError when the ONNX model's geometry does not match the dataset's."""
    want = {"in_channels": data.in_channels, "num_classes": data.num_classes}
    bad = {k: (info[k], v) for k, v in want.items() if v and info.get(k) and info[k] != v}
    if info.get("input_hw") and tuple(info["input_hw"]) != data.input_hw:
        bad["input (H, W)"] = (tuple(info["input_hw"]), data.input_hw)
    if bad:
        detail = ", ".join(f"{k}: model {m} vs dataset {d}" for k, (m, d) in bad.items())
        raise InputError(f"ONNX model {cfg.model!r} does not fit dataset {cfg.data!r} ({detail}); "
                         f"use a dataset of the model's geometry (images are fed as stored, not normalised)")


def _heads(cfg, data) -> list[HeadSpec]:
    """The ONNX model's output heads, probed once at the data's real (C, H, W) on two validation images."""
    x = data.val.x[:2] if len(data.val) >= 2 else data.train.x[:2]
    return probe_onnx_heads(cfg.model, x.numpy(), task=cfg.task)


def _structured_scores(cfg, heads: list[HeadSpec], data) -> dict[str, float]:
    """The ONNX model's own accuracy against label maps / sequences (the labelled head's mIoU or exact-sequence
    rate) on val and test: checks here, before any work, that the labels fit an output (kind, map size)."""
    i = labelled_head(heads, data.train.y)
    if i is None:
        want = {"map": "dense map", "sequence": "sequence"}[data.train.label_kind]
        raise InputError(
            f"dataset {cfg.data!r} holds label {data.train.label_kind}s but model {cfg.model!r} has no {want} output "
            f"(its outputs: {', '.join(f'{h.name} {h.kind}' for h in heads)}); set `task` to the outputs' kind, or "
            f"give labels of the kind the model outputs")
    out = {}
    for name in ("val", "test"):
        split = getattr(data, name)
        pred = onnx_outputs(cfg.model, split.x.numpy(), heads)[i]
        out[name] = float(label_accuracy(heads[i], pred, split.y.numpy())["accuracy"])
    return out


def _card_task(heads: list[HeadSpec]) -> tuple[str, str]:
    """``(task, output)`` of the card: a single classifier keeps ``classify/logits``, anything else is heads."""
    if len(heads) == 1 and heads[0].kind == "classify":
        return "classify", "logits"
    kinds = {h.kind for h in heads}
    return (kinds.pop() if len(kinds) == 1 else "multi"), "heads"


def _check_before_training(cfg, model, in_channels: int, hw: tuple[int, int]) -> None:
    """Fail at the start, not stages later: inputs the downsampling empties, and ops ONNX cannot export.

    One forward at the data's real (H, W) (a zero-size feature map anywhere names ``dataset.input_size``); for a
    user model file also an in-memory ONNX export at the export stage's default opset, since its forward may use
    an operator without an ONNX form (the zoo models are tested to export).
    """
    spec = ModelSpec.parse(cfg.model)
    name = f"model {cfg.model!r}"
    check_min_input(model, in_channels, hw, name)
    if spec.kind == FILE:
        check_exportable(model, torch.zeros(1, int(in_channels), *hw), name)
        model.train()


def _save_history(ctx: StageContext, history: dict[str, Any], source: str) -> str:
    """Write ``history.json`` as finetune does: one entry per epoch; no wall-clock times, so reruns are identical."""
    if source == "trained":
        record = {k: v for k, v in history.items() if k != "seconds"}
    else:
        record = {"epochs": [], "skipped": f"not trained: the model came with its weights ({source})"}
    atomic_write_json(ctx.out_dir / "history.json", record)
    return "history.json"


@stage("baseline", reads=("baseline", DATASET, "task"), version=4)
def run(ctx: StageContext) -> StageOutput:
    """Build the model; load the user's weights or ONNX file, or train it on the dataset when none are given.

    Unlabelled data (an npz with only ``x``) need a pretrained model (``--weights`` or an ONNX file): every split is
    then labelled with the original model's top-1 predictions (``pseudo_labels.npz`` in this stage's folder, read by
    every later stage), so accuracies mean agreement with the original model. An ONNX model sees the images as the
    user stored them (no dataset normalisation; see ``StageContext.data``); one the torch importer cannot convert but
    ONNX Runtime runs is kept as its graph (later stages factorize the graph and skip finetuning).
    """
    cfg = ctx.cfg
    data = ctx.data()
    seed(cfg.seed)
    is_onnx = ModelSpec.parse(cfg.model).is_onnx
    labelled = data.train.y is not None
    if not labelled and not is_onnx and not cfg.weights:
        raise InputError(
            f"dataset {cfg.data!r} has no labels, and model {cfg.model!r} has no trained weights, so a baseline would "
            f"have to be trained, which needs labels. Add labels (an npz array 'y'), or pass --weights CKPT with the "
            f"model's trained weights, or --model model.onnx of a pretrained model: their predictions then serve as "
            f"labels"
        )
    kind = data.train.label_kind
    if kind not in (None, "class") and not is_onnx:
        raise InputError(
            f"dataset {cfg.data!r} holds label {kind}s, which score a pretrained dense or sequence model; a baseline "
            f"is trained only from class labels. Pass the pretrained model as --model model.onnx, or give (N,) class "
            f"indices as 'y'")
    num_classes = data.num_classes
    history: dict[str, Any] = {}
    fallback: str | None = None
    heads: list[HeadSpec] = []
    hw = data.input_hw
    if is_onnx:
        # An imported ONNX model is already trained: check it fits the data, then use it as is.
        if cfg.weights:
            raise InputError(f"--weights is not used with an ONNX model ({cfg.model!r} carries its weights); "
                             f"drop --weights")
        info = onnx_model_info(cfg.model, probe_hw=hw)
        _check_onnx_fits(cfg, info, data)
        heads = _heads(cfg, data)
        structured = _structured_scores(cfg, heads, data) if kind not in (None, "class") else {}
        # the first output's classes (K, C or D); the dataset may declare none
        num_classes = int(heads[0].num_classes) if heads else int(info["num_classes"])
        model, fallback = load_onnx_model(cfg.model, (data.in_channels, *hw), form=cfg.baseline.onnx_form)
        if fallback and cfg.baseline.onnx_form == "graph":
            ctx.log.info("baseline: %s kept as its ONNX graph (baseline.onnx_form=graph): factorize rewrites the "
                         "graph, finetuning will be skipped", cfg.model)
        elif fallback:
            # One line with the reason and the cost: without torch layers nothing can be retrained.
            ctx.log.warning("baseline: the torch importer cannot convert %s (%s); using the ONNX graph as is: "
                            "factorize rewrites the graph, finetuning will be skipped (no accuracy recovery after "
                            "factorization)", cfg.model, fallback)
        source = "onnx"
    elif cfg.weights:
        if not num_classes:  # unlabelled and undeclared: the checkpoint's classifier says how many
            num_classes = class_count_from_weights(cfg.model, cfg.weights, data.in_channels, min(hw))
        model = build_model(cfg.model, num_classes, data.in_channels, min(hw))
        load_weights(model, cfg.weights)
        _check_before_training(cfg, model, data.in_channels, hw)
        source = "weights"
    else:
        model = build_model(cfg.model, num_classes, data.in_channels, min(hw))
        _check_before_training(cfg, model, data.in_channels, hw)
        model, history = train_baseline(model, data, cfg.baseline, seed=cfg.seed, device=cfg.device, progress=ctx.progress)
        source = "trained"
    model = model.cpu().eval()
    check_finite(model, "baseline")
    task, output = _card_task(heads) if heads else ("classify", "logits")
    classify = task == "classify"
    card = ModelCard(
        spec=cfg.model,
        num_classes=max(1, int(num_classes)),
        in_channels=int(data.in_channels),
        input_size=int(hw[1]),
        input_hw=None if hw[0] == hw[1] else (int(hw[0]), int(hw[1])),
        heads=tuple(h.as_dict() for h in heads),
        task=task,
        output=output,
        mean=tuple(float(m) for m in data.mean),
        std=tuple(float(s) for s in data.std),
        class_names=tuple(data.class_names) if classify and len(data.class_names) == int(num_classes) else None,
    )
    files = save_model(model, card, ctx.out_dir)
    files.append(_save_history(ctx, history, source))
    if not labelled and not classify:
        # argmax of a map, a sequence or an embedding is no label: later stages distil from the raw outputs
        ctx.log.info("baseline: dataset %s has no labels and the model's outputs are %s; fidelity to the original's "
                     "raw outputs is measured instead of accuracy", cfg.data, ", ".join(h.kind for h in heads))
    elif not labelled:
        labels = pseudo_labels.predict_labels(model, data, batch=EVAL_BATCH)
        files.append(pseudo_labels.save_labels(ctx.out_dir, labels))
        data = pseudo_labels.apply_labels(data, labels, int(num_classes))
        ctx.cache["data"] = data  # later stages of this run see the labelled data (resumed runs read the file)
        ctx.log.info("baseline: dataset %s has no labels; labelled with the original model's top-1 predictions "
                     "(accuracy = agreement with the original model)", cfg.data)
    macs, params = macs_params(model, card, ctx.out_dir)
    metrics = {
        "source": source,
        "labels": pseudo_labels.DATASET if labelled else (pseudo_labels.PSEUDO if classify else "none"),
        "val_accuracy": accuracy(model, data.val) if classify else structured.get("val", float("nan")),
        "test_accuracy": accuracy(model, data.test) if classify else structured.get("test", float("nan")),
        "input_shape": list(card.input_shape),
        "heads": [dict(h) for h in card.heads],
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
