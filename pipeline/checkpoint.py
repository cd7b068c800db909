"""Model checkpoints: safetensors weights + the model card (``model.json``) that rebuilds the (possibly factorized)
architecture.

Own checkpoints are never pickles: ``model.safetensors`` holds the state dict, ``model.json`` is the
:class:`~pipeline.card.ModelCard` (model spec, class count, input geometry, preprocessing, factorization structure),
so loading needs no code from the checkpoint itself.

A model that exists only as an ONNX graph (:class:`~pipeline.models.ort_graph.OrtGraphModel`, the fallback for ONNX
files the torch importer cannot convert) is saved as that graph, ``model.onnx``, with ``"form": "onnx_graph"`` in
its card; the graph is one the pipeline checked or produced.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save
from torch import nn

from pipeline.artifacts import atomic_write_bytes, atomic_write_json
from pipeline.card import GRAPH_FORM, TORCH_FORM, ModelCard
from pipeline.errors import InputError
from pipeline.factorize.swap import apply_structure
from pipeline.models import build_model
from pipeline.models.ort_graph import OrtGraphModel

WEIGHTS = "model.safetensors"
META = "model.json"
GRAPH = "model.onnx"
__all__ = ["GRAPH", "GRAPH_FORM", "META", "WEIGHTS", "build_from_card", "load_card", "load_meta", "load_model",
           "save_model"]


def save_model(model: nn.Module, card: ModelCard, folder: str | Path) -> list[str]:
    """Write ``model.safetensors`` (or ``model.onnx`` for a graph-only model) and ``model.json`` atomically.

    Args:
        model: the module to save (its state dict, made contiguous; shared storage is cloned).
        card: the model card (its ``form`` is set from the model).
        folder: destination folder.

    Returns:
        ``["model.safetensors", "model.json"]``, or ``["model.onnx", "model.json"]`` for a graph-only model.
    """
    folder = Path(folder)
    if isinstance(model, OrtGraphModel):
        atomic_write_bytes(folder / GRAPH, model.model_bytes)
        atomic_write_json(folder / META, card.with_form(GRAPH_FORM).to_json())
        return [GRAPH, META]
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS, save(state))
    atomic_write_json(folder / META, card.with_form(TORCH_FORM).to_json())
    return [WEIGHTS, META]


def load_meta(folder: str | Path) -> dict[str, Any]:
    """The raw ``model.json`` record of a checkpoint folder, validated as a card (prefer :func:`load_card`)."""
    path = Path(folder) / META
    if not path.is_file():
        raise InputError(f"checkpoint description {str(path)!r} is missing; rerun the stage that writes it (--force)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"checkpoint description {str(path)!r} is not valid JSON ({e}); rerun with --force") from None
    ModelCard.from_json(record, str(path))
    return record


def load_card(folder: str | Path) -> ModelCard:
    """The model card (``model.json``) of a checkpoint folder, validated."""
    return ModelCard.from_json(load_meta(folder), str(Path(folder) / META))


def build_from_card(card: ModelCard) -> nn.Module:
    """Build the (uninitialised) architecture a model card describes."""
    model = build_model(card.spec, card.num_classes, card.in_channels, card.input_size)
    if card.structure:
        model = apply_structure(model, card.structure)
    return model


def load_model(folder: str | Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild a model saved by :func:`save_model` (eval mode, CPU) and return it with its card."""
    folder = Path(folder)
    card = load_card(folder)
    if card.form == GRAPH_FORM:
        gpath = folder / GRAPH
        if not gpath.is_file():
            raise InputError(f"checkpoint graph {str(gpath)!r} is missing; rerun the stage that writes it (--force)")
        return OrtGraphModel(gpath.read_bytes(), source=card.spec).eval(), card
    model = build_from_card(card)
    wpath = folder / WEIGHTS
    if not wpath.is_file():
        raise InputError(f"checkpoint weights {str(wpath)!r} are missing; rerun the stage that writes them (--force)")
    state = load_file(str(wpath))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            f"checkpoint {str(wpath)!r} does not match its architecture: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}; rerun with --force"
        )
    model.eval()
    return model, card
