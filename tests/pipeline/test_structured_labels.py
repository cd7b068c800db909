"""Label maps and label sequences in an npz: a dense-map model scored by mIoU against ``(N, H, W)`` maps, a CTC
recognizer by exact-sequence accuracy against ``(N, L)`` padded sequences, both end to end; accuracy of the
original and of the shipped file recomputed here by hand; labels that fit no output are refused before any work."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.cli import main
from pipeline.data import load_dataset
from pipeline.errors import InputError
from pipeline.runner import run
from tests.helpers.wild_models import WILD_MODELS, export_wild, make_model, sample_inputs
from tests.pipeline.conftest import fast_config

N = 60
TINY = ["finetune.epochs=1", "finetune.extra_epochs=0",
        "finetune.optimizer=adam", "finetune.lr=0.0005", "quantize.calib_size=16",
        "benchmark.samples=12", "benchmark.warmup=2", "benchmark.html=false", "benchmark.max_drop=0.05"]


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def _miou(pred: np.ndarray, labels: np.ndarray) -> float:
    """Pooled IoU over the classes present, foreground = prob > 0.5 of a 1-channel map, written out directly."""
    p = (pred[:, 0] > 0.5).astype(np.int64)
    ious = []
    for c in sorted(set(np.unique(p)) | set(np.unique(labels))):
        inter, union = np.sum((p == c) & (labels == c)), np.sum((p == c) | (labels == c))
        ious.append(inter / union)
    return float(np.mean(ious))


def _ctc(out_tnk: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [T, N, K] scores: best class per step, repeats merged, blanks (0) dropped."""
    best = out_tnk.argmax(2).T
    seqs = []
    for row in best:
        s, prev = [], -1
        for c in row:
            if c != prev and c != 0:
                s.append(int(c))
            prev = c
        seqs.append(tuple(s))
    return seqs


def _dataset(tmp: Path, name: str, labels_from) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    spec = WILD_MODELS[name]
    model = export_wild(make_model(spec), spec, tmp / f"{name}.onnx", 18)
    x = sample_inputs(spec, N, seed=5)
    y = labels_from(_run_onnx(model, x), np.random.default_rng(1))
    np.savez(tmp / f"{name}.npz", x=x, y=y)
    return model, tmp / f"{name}.npz", x, y


def _map_labels(out: np.ndarray, rng) -> np.ndarray:
    y = (out[:, 0] > 0.5).astype(np.int64)
    flip = rng.random(y.shape) < 0.1  # 10% of pixels disagree with the model: its mIoU is below 1
    return np.where(flip, 1 - y, y)


def _seq_labels(out: np.ndarray, rng) -> np.ndarray:
    seqs = _ctc(out)
    seqs = [s if i % 4 else s[:-1] for i, s in enumerate(seqs)]  # every fourth one wrong (last symbol dropped)
    width = max(1, max(len(s) for s in seqs))
    return np.array([list(s) + [-1] * (width - len(s)) for s in seqs], dtype=np.int64)


def _report(result) -> dict:
    arts = {r.artifact.stage: r.artifact for r in result.records}
    return json.loads(arts["benchmark"].path("report.json").read_text()), arts


def test_label_maps_score_a_dense_model_by_miou_end_to_end(tmp_path: Path) -> None:
    model, data, _, _ = _dataset(tmp_path, "dense_text", _map_labels)
    cfg = fast_config(tmp_path / "art", *TINY, model=str(model), data=f"npz:{data}")
    result = run(cfg, progress=False)
    rep, arts = _report(result)
    ds = load_dataset(f"npz:{data}", seed=0, split_sizes=(cfg.dataset.train_size, cfg.dataset.val_size,
                                                          cfg.dataset.test_size))
    assert ds.test.label_kind == "map" and ds.test.y.shape[1:] == ds.test.x.shape[2:]
    x_test, y_test = ds.test.x.numpy() * np.array(ds.std).reshape(1, -1, 1, 1) + np.array(ds.mean).reshape(1, -1, 1, 1), \
        ds.test.y.numpy()
    assert arts["baseline"].metrics["labels"] == "dataset"
    orig = _miou(_run_onnx(model, x_test), y_test)
    assert 0.5 < orig < 1.0 and arts["baseline"].metrics["test_accuracy"] == pytest.approx(orig, abs=1e-6)
    by = {v["name"]: v for v in rep["variants"]}
    assert by["original"]["accuracy"] == pytest.approx(orig, abs=1e-6)
    shipped = rep["headline"]["shipped"]
    ship_file = result.deploy_dir.parent / by[shipped]["file"]
    assert by[shipped]["accuracy"] == pytest.approx(_miou(_run_onnx(ship_file, x_test), y_test), abs=1e-6)
    dense = next(e for e in by[shipped]["outputs"] if e["kind"] == "dense")
    assert dense["accuracy"] == by[shipped]["accuracy"] and "iou" in dense  # accuracy beside fidelity


def test_label_sequences_score_a_ctc_model_by_exact_sequences_end_to_end(tmp_path: Path) -> None:
    model, data, _, _ = _dataset(tmp_path, "ctc_recognizer", _seq_labels)
    cfg = fast_config(tmp_path / "art", *TINY, "factorize.energy=0.97", model=str(model), data=f"npz:{data}")
    result = run(cfg, progress=False)
    rep, arts = _report(result)
    ds = load_dataset(f"npz:{data}", seed=0, split_sizes=(cfg.dataset.train_size, cfg.dataset.val_size,
                                                          cfg.dataset.test_size))
    assert ds.test.label_kind == "sequence"
    x_test = ds.test.x.numpy() * np.array(ds.std).reshape(1, -1, 1, 1) + np.array(ds.mean).reshape(1, -1, 1, 1)
    want = [tuple(int(c) for c in row if c >= 0) for row in ds.test.y.numpy()]

    def exact(path: Path) -> float:
        return float(np.mean([a == b for a, b in zip(_ctc(_run_onnx(path, x_test)), want)]))

    orig = exact(model)
    assert 0.5 <= orig < 1.0 and arts["baseline"].metrics["test_accuracy"] == pytest.approx(orig)
    by = {v["name"]: v for v in rep["variants"]}
    shipped = rep["headline"]["shipped"]
    assert by["original"]["accuracy"] == pytest.approx(orig)
    assert by[shipped]["accuracy"] == pytest.approx(exact(result.deploy_dir.parent / by[shipped]["file"]))


def test_labels_that_fit_no_output_are_refused_before_any_work(tmp_path: Path, capsys) -> None:
    # label maps for a classifier: no dense output to score
    spec = WILD_MODELS["dw_separable"]
    model = export_wild(make_model(spec), spec, tmp_path / "cls.onnx", 18)
    x = sample_inputs(spec, N, seed=5)
    np.savez(tmp_path / "maps.npz", x=x, y=np.zeros((N, *x.shape[2:]), np.int64))
    rc = main(["run", "--model", str(model), "--data", f"npz:{tmp_path / 'maps.npz'}", "--artifacts",
               str(tmp_path / "art"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "label maps" in err and "no dense map output" in err
    # label maps to train a zoo model from scratch
    np.savez(tmp_path / "zoo.npz", x=np.random.default_rng(0).random((N, 1, 16, 16)).astype(np.float32),
             y=np.zeros((N, 16, 16), np.int64))
    rc = main(["run", "--model", "tiny", "--data", f"npz:{tmp_path / 'zoo.npz'}", "--artifacts",
               str(tmp_path / "art2"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "class labels" in err and "--model model.onnx" in err
    assert not (tmp_path / "art" / "cls" / "deploy").exists()


def test_malformed_sequences_and_mixed_label_kinds_are_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "gap.npz", x=x, y=np.array([[1, -1, 2]] * 20))
    with pytest.raises(InputError, match="negative values may only pad the end"):
        load_dataset(f"npz:{tmp_path / 'gap.npz'}")
    np.savez(tmp_path / "mixed.npz", x=x, y=np.zeros((20,), np.int64), x_test=x, y_test=np.zeros((20, 8, 8), np.int64))
    with pytest.raises(InputError, match="different kinds of labels"):
        load_dataset(f"npz:{tmp_path / 'mixed.npz'}")
