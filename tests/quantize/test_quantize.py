"""Accuracy guard on a random net where int8 flips predictions, with the strictest setting (max_drop=0)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from pipeline.config import QuantizeConfig
from pipeline.entropy.container import pack_onnx, unpack_to_onnx
from pipeline.quantize.ort_static import quantize_static


def _export_random_net(path: Path) -> Path:
    """A tiny untrained conv net (near-tied random logits, so int8 noise changes some argmaxes)."""
    torch.manual_seed(7)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(512, 64)).eval()
    torch.onnx.export(m, torch.zeros(1, 3, 8, 8), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0]


def test_guard_with_zero_max_drop_reports_its_outcome(tmp_path: Path) -> None:
    fp32 = _export_random_net(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    val = rng.standard_normal((400, 3, 8, 8)).astype(np.float32)
    labels = _run(fp32, val).argmax(1)

    def eval_fn(p: Path) -> float:
        return float((_run(p, val).argmax(1) == labels).mean())

    out = tmp_path / "int8.onnx"
    cfg = replace(QuantizeConfig(calib_size=16), max_drop=0.0)
    info = quantize_static(fp32, out, calib, cfg, eval_fn=eval_fn, fp32_accuracy=1.0)
    g = info["guard"]
    assert info["calibrated_on"] == 16 and isinstance(info["excluded_nodes"], list)
    assert g["enabled"] and g["max_drop"] == 0.0 and g["int8_accuracy_all"] < 1.0  # int8 really flips predictions
    assert g["sensitivity"]  # the guard measured every candidate node
    assert g["met"] == (g["drop"] <= 0.0)  # held or not, the outcome is reported truthfully
    assert g["int8_accuracy"] == eval_fn(out) and g["drop"] == 1.0 - g["int8_accuracy"]
    assert len(info["excluded_nodes"]) >= 1
    q = onnx.load(str(out))
    inits = {t.name for t in q.graph.initializer}
    by_name = {n.name: n for n in q.graph.node}
    for name in info["excluded_nodes"]:  # excluded nodes keep their float weight (no DequantizeLinear in front)
        assert by_name[name].input[1] in inits
    # The guarded model still packs and unpacks to identical ORT outputs.
    stats = pack_onnx(out, tmp_path / "w.lrdc", coder="auto")
    rebuilt = unpack_to_onnx(tmp_path / "w.lrdc", tmp_path / "rebuilt.onnx")
    assert np.array_equal(_run(out, val), _run(rebuilt, val))
    assert stats["size_bytes"] == (tmp_path / "w.lrdc").stat().st_size
