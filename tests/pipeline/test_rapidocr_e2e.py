"""A pretrained model nobody here trained, end to end: PaddleOCR's text-direction classifier as rapidocr-onnxruntime
ships it (paddle2onnx export: Constant-node weights, ``-1`` batch and unnamed H/W dims, opset 11, MatMul head,
depthwise-separable backbone), on generated text-line images at its 3x48x192 input, through every stage on the graph
path (``baseline.onnx_form=graph``): the graph's ranks are checked by output fidelity, the report opens with the
reach line (its depthwise convs), and what ships meets the gate on the test split (checked by hand here)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipeline.config import build_config
from pipeline.data import load_dataset
from pipeline.data.core import unnormalised
from pipeline.entropy.container import unpack_to_onnx
from pipeline.runner import run
from tests.helpers.ort import session
from tests.helpers.rapidocr import MODELS, model_path, text_lines

H, W = MODELS["cls"].input_hw
MAX_DROP = 0.1


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("rapidocr_cls")
    model = model_path("cls")
    data = tmp / "lines.npz"
    # 90 train / 15 val / 45 test: with 18 test images (one = 5.6 points) an AVX-512 host's numerics flipped two and
    # the 10-point gate refused every variant
    np.savez(data, x=text_lines(150, H, W, seed=0))
    cfg = build_config(None, ["baseline.onnx_form=graph", f"dataset.input_size=[{H}, {W}]",
                              f"benchmark.max_drop={MAX_DROP}", "quantize.calib_size=16", "quantize.max_drop=1.0",
                              "benchmark.samples=8", "benchmark.warmup=2", "benchmark.html=false",
                              "export.mobile=false"],
                       model=str(model), data=f"npz:{data}", artifacts=str(tmp / "art"))
    return cfg, run(cfg, progress=False), model


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    sess = session(str(path))
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_the_shipped_file_is_a_paddle2onnx_export() -> None:
    m = onnx.load(str(model_path("cls")))
    assert sum(n.op_type == "Constant" for n in m.graph.node) > 100 and not m.graph.initializer
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == -1 and dims[1].dim_value == 3  # paddle2onnx's -1 batch


def test_runs_end_to_end_on_the_graph_path(cls_run) -> None:
    _, result, _ = cls_run
    arts = {r.artifact.stage: r.artifact for r in result.records}
    base = arts["baseline"].metrics
    assert base["form"] == "onnx_graph" and base["input_shape"] == [3, H, W]
    assert [h["kind"] for h in base["heads"]] == ["classify"] and base["heads"][0]["num_classes"] == 2
    fac = arts["factorize"].metrics
    assert fac["fidelity_check"]["passed"]
    rows = json.loads((arts["factorize"].dir / "layers.json").read_text())
    assert len(rows) == 53 and fac["layers_fallen_back"] == sum(bool(r["fallback"]) for r in rows)
    assert result.deploy_dir is not None and (result.deploy_dir / "model.onnx").is_file()


def test_the_report_opens_with_the_reach_line(cls_run) -> None:
    _, result, _ = cls_run
    report = json.loads((result.deploy_dir / "report.json").read_text())
    reach = report["reach"]
    assert "depthwise conv" in reach["by_reason"] and 0 < reach["out_of_reach_share"] < 1
    assert reach["max_mac_reduction"] == pytest.approx(1 / reach["out_of_reach_share"])
    md = (result.deploy_dir / "report.md").read_text().splitlines()
    assert md[2].startswith("**Reach: ") and "at most" in md[2]


def test_what_ships_meets_the_gate_by_hand(cls_run, tmp_path: Path) -> None:
    cfg, result, model = cls_run
    report = json.loads((result.deploy_dir / "report.json").read_text())
    shipped = report["gate"]["shipped"]["cpu"]
    # The test split as the pipeline loads it: the shipped file against the original, top-1 agreement by hand.
    d = unnormalised(load_dataset(cfg.data, seed=cfg.seed, input_size=(H, W)))
    x = d.test.x.numpy().astype(np.float32)
    ship = result.root / shipped["file"]
    if shipped["variant"] == "unpacked":  # the container ships: the graph `lowrank-deploy unpack` rebuilds from it
        ship = unpack_to_onnx(ship, tmp_path / "unpacked.onnx")
    ref, out = _outputs(model, x), _outputs(ship, x)
    agreement = float(np.mean(ref.argmax(1) == out.argmax(1)))
    assert agreement >= 1 - MAX_DROP
