"""Model checkpoints: safetensors weights + a JSON description that rebuilds the (possibly factorized) architecture.

Own checkpoints are never pickles: ``model.safetensors`` holds the state dict, ``model.json`` holds the model spec,
class count, input geometry and the factorization structure, so loading needs no code from the checkpoint itself.

A model that exists only as an ONNX graph (:class:`~pipeline.models.ort_graph.OrtGraphModel`, the fallback for ONNX
files the torch importer cannot convert) is saved as that graph, ``model.onnx``, with ``"form": "onnx_graph"`` in
``model.json``; the graph is one the pipeline checked or produced.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.artifacts import atomic_write_bytes, atomic_write_json
from pipeline.errors import InputError

WEIGHTS = "model.safetensors"
META = "model.json"
GRAPH = "model.onnx"
#: ``model.json`` "form" of a checkpoint stored as an ONNX graph
GRAPH_FORM = "onnx_graph"


def save_model(model: nn.Module, meta: dict[str, Any], folder: str | Path) -> list[str]:
    """Write ``model.safetensors`` (or ``model.onnx`` for a graph-only model) and ``model.json`` atomically.

    Args:
        model: the module to save (its state dict, made contiguous; shared storage is cloned).
        meta: ``{"spec", "num_classes", "in_channels", "input_size", "structure"}``.
        folder: destination folder.

    Returns:
        ``["model.safetensors", "model.json"]``, or ``["model.onnx", "model.json"]`` for a graph-only model.
    """
    from safetensors.torch import save

    from pipeline.models.ort_graph import OrtGraphModel

    folder = Path(folder)
    if isinstance(model, OrtGraphModel):
        atomic_write_bytes(folder / GRAPH, model.model_bytes)
        atomic_write_json(folder / META, {**meta, "form": GRAPH_FORM})
        return [GRAPH, META]
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS, save(state))
    atomic_write_json(folder / META, meta)
    return [WEIGHTS, META]


def load_meta(folder: str | Path) -> dict[str, Any]:
    """Read ``model.json`` from a checkpoint folder."""
    path = Path(folder) / META
    if not path.is_file():
        raise InputError(f"checkpoint description {str(path)!r} is missing; rerun the stage that writes it (--force)")
    return json.loads(path.read_text())


def build_from_meta(meta: dict[str, Any]) -> nn.Module:
    """Build the (uninitialised) architecture a checkpoint's ``model.json`` describes."""
    from pipeline.factorize.swap import apply_structure
    from pipeline.models import build_model

    model = build_model(meta["spec"], meta["num_classes"], meta["in_channels"], meta["input_size"])
    structure = meta.get("structure") or {}
    if structure:
        model = apply_structure(model, structure)
    return model


def load_model(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model` (eval mode, CPU) and return it with its meta."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = load_meta(folder)
    if meta.get("form") == GRAPH_FORM:
        from pipeline.models.ort_graph import OrtGraphModel

        gpath = folder / GRAPH
        if not gpath.is_file():
            raise InputError(f"checkpoint graph {str(gpath)!r} is missing; rerun the stage that writes it (--force)")
        return OrtGraphModel(gpath.read_bytes(), source=str(meta.get("spec", ""))).eval(), meta
    model = build_from_meta(meta)
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
    return model, meta
