"""The shipped graphs of one run: metadata written in, normalisation optionally baked, mobile files made from them.

One call per stage keeps the rule "every shipped graph carries its metadata" in one place:
:func:`ship_graph` for each ``.onnx`` that ships (``model.onnx`` in export, ``model.int8.onnx`` in quantize), then
:func:`ship_mobile` on those exact files, whose result (keyed by shipped file name) is what ``mobile.json`` holds.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from exporters.metadata import DeployMeta, for_file, model_json, write_metadata
from exporters.ort_mobile import build_mobile
from exporters.preprocess import bake_preprocessing
from pipeline.artifacts import sha256_file
from pipeline.errors import InputError


def ship_graph(src: str | Path, dst: str | Path, meta: DeployMeta, bake: bool = False) -> dict[str, Any]:
    """Write the shipped copy of ``src`` at ``dst``: ``(x-mean)/std`` baked in if ``bake``, ``lowrank.*`` metadata set.

    ``src`` may equal ``dst`` (metadata written in place; baking in place is refused: the unbaked graph is what the
    report measured on normalised data, keep it).

    Returns:
        ``{"file", "baked", "sha256", "bytes"}``.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"ship_graph: {src} does not exist; export the model first")
    if bake:
        if src.resolve() == dst.resolve():
            raise InputError(f"ship_graph: baking {src.name} in place would lose the measured graph; give another dst")
        bake_preprocessing(src, dst, meta.mean, meta.std)
    elif src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    write_metadata(dst, for_file(meta, baked=bake))
    return {"file": dst.name, "baked": bool(bake), "sha256": sha256_file(dst), "bytes": dst.stat().st_size}


def ship_mobile(models: Mapping[str, str | Path], out_dir: str | Path, meta: DeployMeta,
                target: str = "nnapi") -> dict[str, Any]:
    """Mobile files for ``target`` from the shipped graphs (see :func:`exporters.ort_mobile.build_mobile`).

    Returns:
        ``mobile.json`` content: ``{"target", "style", "reproducible", "config", "files": [...], "ort": {ort name:
        {..., "usability": {ep: summary}, "usability_error", "graph_matches_shipped"}}, "log": {ort name: [lines]}}``.
    """
    res = build_mobile(models, out_dir, target=target, meta=meta)
    ort: dict[str, Any] = {}
    logs: dict[str, Any] = {}
    for name, info in res["ort"].items():
        u = res["usability"].get(name, {})
        ort[name] = {**info, "usability": u.get("summary", {}), "usability_error": u.get("error"),
                     "graph_matches_shipped": u.get("graph_matches_shipped"), "checked_graph": u.get("checked_graph")}
        logs[name] = u.get("log", [])
    return {"target": res["target"], "style": res["style"], "reproducible": res["reproducible"],
            "config": res["config"], "config_sha256": res["config_sha256"], "files": res["files"],
            "fixed": res["fixed"], "ort": ort, "log": logs}


def deploy_model_json(meta: DeployMeta, shipped: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``deploy/model.json`` for the shipped files (``{name: per-file facts}``, e.g. from :func:`ship_graph` and the
    ``ort`` entries of :func:`ship_mobile`: batch, baked, session options)."""
    return model_json(meta, shipped)
