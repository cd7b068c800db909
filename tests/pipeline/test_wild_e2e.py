"""Models as exported in the wild, end to end: the four test models of ``tests/helpers/wild_models.py`` (a dense
text map, a CTC recognizer with non-square input, a two-output net, a depthwise-separable classifier; Constant-node
weights, opset 11/18, dynamic batch) with an unlabelled npz of their input shape, through every stage.

Checked per model: the input geometry and heads on the card, distillation from raw outputs (no pseudo-labels for
non-classify outputs), the per-head fidelity of every variant in the report (recomputed by hand for the shipped
one), the fidelity gate and a headline that names the shipped variant. A deliberately broken factorization is
refused by the gate: the CLI exits 2 with the reason and nothing is published.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.card import ModelCard
from pipeline.cli import main
from pipeline.data import load_dataset
from pipeline.data.core import unnormalised
from pipeline.pseudo_labels import PSEUDO
from pipeline.runner import run
from tests.helpers.wild_models import WILD_MODELS, export_wild, make_model, sample_inputs
from tests.pipeline.conftest import fast_config

N_IMAGES = 60
TINY = ["finetune.epochs=1", "finetune.extra_epochs=0",
        "finetune.optimizer=adam", "finetune.lr=0.0005", "quantize.calib_size=16",
        "benchmark.samples=12", "benchmark.warmup=2", "benchmark.html=false", "benchmark.max_drop=0.01"]
#: per model: the export opset and settings under which some variant meets the default gate (these random-weight
#: nets are not low rank: the CTC recognizer needs nearly all of its energy kept)
CASES = {
    "dense_text": (18, []),
    "ctc_recognizer": (11, ["factorize.energy=0.97"]),
    "multi_head": (18, []),
    "dw_separable": (11, []),
}
VARIANTS = ("factorized", "finetuned", "int8", "unpacked")
METRIC = {"classify": "agreement", "dense": "iou", "sequence": "step_agreement", "embedding": "cosine"}


def _inputs(tmp: Path, name: str) -> tuple[Path, Path]:
    spec = WILD_MODELS[name]
    model = export_wild(make_model(spec), spec, tmp / f"{name}.onnx", CASES[name][0])
    data = tmp / f"{name}.npz"
    np.savez(data, x=sample_inputs(spec, N_IMAGES, seed=5))  # unlabelled: only x
    return model, data


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x.astype(np.float32)})


def _hand_fidelity(kind: str, ref: np.ndarray, out: np.ndarray) -> float:
    """The kind's headline fidelity written out directly (TNK sequences and 1-channel prob maps as these nets have)."""
    if kind == "classify":
        return float(np.mean(ref.argmax(1) == out.argmax(1)))
    if kind == "embedding":
        r, o = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
        return float(np.mean((r * o).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1))))
    if kind == "dense":
        p, q = ref[:, 0] > 0.5, out[:, 0] > 0.5
        return float(np.logical_and(p, q).sum() / np.logical_or(p, q).sum())
    r, o = ref.argmax(2).T, out.argmax(2).T  # TNK -> [N, T] best class per step
    mask = (r != 0) | (o != 0)  # steps where either emits a non-blank
    return float((r == o)[mask].mean())


@pytest.mark.parametrize("name", list(CASES))
def test_wild_model_end_to_end(tmp_path: Path, name: str) -> None:
    spec = WILD_MODELS[name]
    model, data = _inputs(tmp_path, name)
    cfg = fast_config(tmp_path / "art", *TINY, *CASES[name][1], model=str(model), data=f"npz:{data}")
    result = run(cfg, progress=False)
    assert result.deploy_dir is not None
    arts = {r.artifact.stage: r.artifact for r in result.records}
    card = ModelCard.from_json(json.loads((arts["baseline"].dir / "model.json").read_text()))
    # geometry from the model's input, heads probed at it
    assert card.input_shape == spec.input_shape
    assert [h["kind"] for h in card.heads] == list(spec.kinds)
    assert [h["layout"] for h in card.heads] == list(spec.layouts)
    classify_only = spec.kinds == ("classify",)
    assert arts["baseline"].metrics["labels"] == (PSEUDO if classify_only else "none")
    if not classify_only:
        fin = arts["finetune"].metrics
        assert fin["method"] == "distill_heads" and [e["kind"] for e in fin["fidelity"]] == list(spec.kinds)
    report = json.loads((arts["benchmark"].dir / "report.json").read_text())
    by = {v["name"]: v for v in report["variants"]}
    for v in VARIANTS:
        outs = by[v]["outputs"]
        assert [o["kind"] for o in outs] == list(spec.kinds)
        for o, kind in zip(outs, spec.kinds):
            assert 0.0 <= o[METRIC[kind]] <= 1.0 + 1e-6
    # the gate: something ships, the headline names it, every refusal has a reason
    shipped = report["gate"]["shipped"][report["settings"]["target"]]
    assert shipped["variant"] in ("finetuned", "int8", "unpacked")
    assert report["headline"]["shipped"] == shipped["variant"] and "ships" in report["headline"]["text"]
    if shipped["speed_ratio"] < 1.0:
        assert " faster" not in report["headline"]["text"].split(";")[0]
    verdicts = {v["name"]: v for v in report["gate"]["verdicts"]}
    assert verdicts[shipped["variant"]]["passed"]
    # hand computation of the finetuned model's fidelity on the test split
    d = unnormalised(load_dataset(cfg.data, seed=cfg.seed))
    x = d.test.x.numpy()
    ref = _outputs(arts["export"].dir / "original.onnx", x)
    out = _outputs(arts["export"].dir / "model.onnx", x)
    for i, kind in enumerate(spec.kinds):
        got = by["finetuned"]["outputs"][i][METRIC[kind]]
        assert got == pytest.approx(_hand_fidelity(kind, ref[i], out[i]), abs=1e-5)


def test_gate_refuses_a_broken_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ranks cut to 2 % and no finetuning: every variant fails the IoU floor; exit 2, the reason, no deploy/."""
    model, data = _inputs(tmp_path, "dense_text")
    art = tmp_path / "art"
    # align=1: the target's channel block (16 on AVX-512 hosts) would round 2 % ranks up to no saving at all
    sets = [*TINY, "factorize.selector=fixed", "factorize.ratio=0.02", "factorize.align=1", "factorize.min_channels=1",
            "factorize.min_mac_saving=0", "factorize.skip_first=false", "finetune.epochs=0"]
    argv = ["run", "--model", str(model), "--data", f"npz:{data}", "--set", f"artifacts={art}"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fidelity gate" in err and "nothing ships" in err and "IoU" in err
    assert not (art / "dense_text" / "deploy").exists()
