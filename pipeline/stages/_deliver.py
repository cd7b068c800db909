"""What quantize ships beside its int8 model: baked graphs (``export.bake_preprocessing``) and the mobile files
(``export.mobile``), made from exactly the graphs that ship, with ``mobile.json`` describing each ``.ort`` file.

Kept out of the quantize module so that stage stays about quantization; the names here are the stage files the
runner publishes (:data:`DELIVERABLES`, stage file -> deploy name; a later entry for the same deploy name wins when
its file exists, so a baked graph replaces the unbaked one in ``deploy/``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from exporters.deliverables import ship_graph, ship_mobile
from exporters.metadata import DeployMeta, for_file
from exporters.ort_convert import CONFIG_NAME
from pipeline.artifacts import atomic_write_json

MOBILE_JSON = "mobile.json"
#: baked copies (stage file names; shipped as model.onnx / model.int8.onnx)
BAKED = {"model.onnx": "model.baked.onnx", "model.int8.onnx": "model.int8.baked.onnx"}
#: every mobile file a target may make (nnapi/coreml: all of them; cpu: the two .ort and the config)
MOBILE_FILES = ("model.ort", "model.int8.ort", "model.b1.onnx", "model.b1.ort", "model.int8.b1.onnx",
                "model.int8.b1.ort", CONFIG_NAME)
DELIVERABLES = {"model.int8.onnx": "model.int8.onnx",
                **{stage_file: deploy for deploy, stage_file in BAKED.items()},
                **{n: n for n in MOBILE_FILES}}


def ship(cfg: Any, out_dir: Path, fp32: Path, int8: Path, meta: DeployMeta) -> tuple[list[str], dict[str, Any]]:
    """Bake (if configured) and make the mobile files of the fp32 ``fp32`` and int8 ``int8`` graphs into ``out_dir``.

    ``int8`` must already carry ``meta`` (written by the caller); ``fp32`` is export's file (metadata written there).

    Returns:
        The stage files written, and metrics: ``{"shipped": {deploy name: stage file}, "baked", "mobile_target"}``.
    """
    files: list[str] = []
    shipped = {"model.onnx": str(fp32), "model.int8.onnx": str(int8)}
    bake = bool(cfg.export.bake_preprocessing)
    if bake:
        for deploy_name, src in list(shipped.items()):
            dst = out_dir / BAKED[deploy_name]
            ship_graph(src, dst, meta, bake=True)
            shipped[deploy_name] = str(dst)
            files.append(dst.name)
    metrics: dict[str, Any] = {"baked": bake, "mobile_target": None}
    if cfg.export.mobile:
        # the batch-1 copies take the metadata of the graphs they copy (baked or not)
        mob = ship_mobile(shipped, out_dir, for_file(meta, baked=bake), cfg.export.mobile_target)
        atomic_write_json(out_dir / MOBILE_JSON, mob)
        files += list(mob["files"]) + [MOBILE_JSON]
        metrics["mobile_target"] = mob["target"]
        metrics["ort_bytes"] = {n: e.get("bytes") for n, e in mob["ort"].items()}
    metrics["shipped"] = {n: Path(p).name for n, p in shipped.items()}
    return files, metrics
