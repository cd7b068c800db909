"""Bring your own model: a pretrained ONNX CNN and an unlabelled npz (only ``x``) through every stage.

Two tiny torch CNNs exported to ONNX (opset 17: Conv, BatchNormalization, Clip, HardSwish, GlobalAveragePool,
Flatten, Gemm): one the torch importer converts (factorized and distilled in torch), one with an ``Elu`` the importer
does not support (factorized on the ONNX graph, finetuning skipped). Labels are the original model's top-1.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.onnx import SUPPORTED_OPS
from pipeline.pseudo_labels import PSEUDO
from pipeline.runner import run, stage_names
from tests.helpers.ort import session
from tests.pipeline.conftest import fast_config

SIZE, CLASSES = 16, 10


class TinyCNN(nn.Module):
    """stem -> strided conv + ReLU6 (Clip) + BN -> dilated conv -> conv + HardSwish -> GAP -> Flatten -> Gemm."""

    def __init__(self, elu: bool = False) -> None:
        super().__init__()
        self.elu = elu
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 48, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(48)
        self.dil = nn.Conv2d(48, 48, 3, padding=2, dilation=2)
        self.mix = nn.Conv2d(48, 64, 3, padding=1, bias=False)
        self.fc = nn.Linear(64, CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.stem(x))
        x = self.bn(F.relu6(self.down(x)))
        x = self.dil(x)
        x = F.elu(x) if self.elu else F.relu(x)
        x = F.hardswish(self.mix(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _low_rank_(conv: nn.Conv2d, rank: int) -> None:
    """Project the kernel's output and input channel modes onto their top ``rank`` singular vectors (Tucker rank
    ``rank``): a trained net's layers are close to low rank, a random one's are not."""
    w = conv.weight.data
    n, c = w.shape[:2]
    u = torch.linalg.svd(w.reshape(n, -1), full_matrices=False)[0][:, :rank]
    v = torch.linalg.svd(w.transpose(0, 1).reshape(c, -1), full_matrices=False)[0][:, :rank]
    conv.weight.data = torch.einsum("nm,mckl,cd->ndkl", u @ u.T, w, v @ v.T).contiguous()


def _export(model: TinyCNN, path: Path, images: np.ndarray) -> Path:
    g = torch.Generator().manual_seed(1)
    model.eval()
    with torch.no_grad():
        if model.elu:
            # The graph path is never finetuned: its convs get Tucker rank 8, which the fidelity fallback finds
            # (energy 0.6 cuts into it, 0.9 or 0.97 keeps it) so that some layers stay factorized.
            _low_rank_(model.dil, 8)
            _low_rank_(model.mix, 8)
        # Non-trivial BN statistics, so a wrong BN import would show.
        model.bn.running_mean.copy_(torch.randn(48, generator=g) * 0.2)
        model.bn.running_var.copy_(torch.rand(48, generator=g) + 0.5)
        # A random head on standardised features: predictions spread over the classes (an untrained head would give
        # one class for every image, and pseudo-labels would prove little).
        f = model.features(torch.from_numpy(images))
        w = torch.randn(CLASSES, f.shape[1], generator=g) / (f.std(0).mean() * f.shape[1] ** 0.5) * 3.0
        model.fc.weight.copy_(w)
        model.fc.bias.copy_(-(w @ f.mean(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.rand(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17,
            # PRESERVE keeps the BatchNormalization node, as in third-party files.
            training=torch.onnx.TrainingMode.PRESERVE, input_names=["image"], output_names=["scores"],
            dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}},
        )
    return path


def _unlabelled_npz(path: Path, n: int = 160) -> Path:
    # uint8 HWC images with structure (blobs of varying colour) and no 'y': the loaders scale them to [0, 1].
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    imgs = []
    for _ in range(n):
        cy, cx, r = rng.uniform(3, 13), rng.uniform(3, 13), rng.uniform(2, 6)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None] * rng.uniform(0, 255, 3)
        imgs.append(np.clip(blob + rng.uniform(0, 60, (SIZE, SIZE, 3)), 0, 255))
    np.savez(path, x=np.stack(imgs).astype(np.uint8))
    return path


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = session(str(path))
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _pipeline(tmp: Path, elu: bool):
    torch.manual_seed(0)
    data = _unlabelled_npz(tmp / "images.npz")
    model = _export(TinyCNN(elu=elu), tmp / ("elu_cnn.onnx" if elu else "tiny_cnn.onnx"), _raw_images(data))
    # This random-weight CNN is not low rank: after one finetune epoch its variants agree with it on ~30% of the
    # images, which the fidelity gate refuses. These tests are about the plumbing; the gate is tested in
    # test_wild_e2e.py, so it is opened here.
    cfg = fast_config(tmp / "artifacts", "benchmark.max_drop=1.0", model=str(model), data=f"npz:{data}")
    return cfg, run(cfg, progress=False), model, data


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    return _pipeline(tmp_path_factory.mktemp("onnx_e2e"), elu=False)


@pytest.fixture(scope="module")
def fallback(tmp_path_factory: pytest.TempPathFactory):
    return _pipeline(tmp_path_factory.mktemp("onnx_fallback"), elu=True)


def _check_deliverables(result, x: np.ndarray) -> None:
    d = result.deploy_dir
    for name in ("model.onnx", "model.int8.onnx", "model.ort", "weights.lrdc", "report.md", "report.json"):
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    for name in ("model.onnx", "model.int8.onnx"):
        onnx.checker.check_model(str(d / name), full_check=True)
        out = _run_onnx(d / name, x)
        assert out.shape == (len(x), CLASSES) and np.isfinite(out).all()
    assert "QuantizeLinear" in _ops(d / "model.int8.onnx")


def _raw_images(data: Path) -> np.ndarray:
    with np.load(data) as z:
        return z["x"].transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def _check_pseudo_labels(result, model: Path, data: Path) -> None:
    from pipeline.data import load_dataset
    from pipeline.data.core import unnormalised

    base = result.artifact("baseline")
    assert base.metrics["labels"] == PSEUDO
    assert base.metrics["test_accuracy"] == 1.0 and base.metrics["val_accuracy"] == 1.0  # original vs itself
    meta = json.loads((base.dir / "model.json").read_text())
    assert meta["num_classes"] == CLASSES  # from the model's output: the npz declares none
    assert meta["mean"] == [0.0, 0.0, 0.0] and meta["std"] == [1.0, 1.0, 1.0]  # fed as stored
    with np.load(base.dir / "pseudo_labels.npz", allow_pickle=False) as z:
        labels = {k: z[k] for k in ("train", "val", "test")}
    raw = _raw_images(data)
    assert sum(len(v) for v in labels.values()) == len(raw)
    # The labels are what the *user's* file predicts on the images as stored (x / 255, no normalisation).
    test_x = unnormalised(load_dataset(f"npz:{data}", seed=0)).test.x.numpy()
    nearest = [np.abs(raw - row).reshape(len(raw), -1).max(1).min() for row in test_x[:5]]
    assert max(nearest) < 1e-5
    np.testing.assert_array_equal(_run_onnx(model, test_x).argmax(1), labels["test"])
    assert len(np.unique(labels["test"])) >= 4  # the labels carry information
    report = json.loads((result.deploy_dir / "report.json").read_text())
    assert report["settings"]["labels"] == PSEUDO
    assert next(v for v in report["variants"] if v["name"] == "original")["accuracy"] == 1.0
    assert PSEUDO in (result.deploy_dir / "report.md").read_text()


# ------------------------------------------------------------------------------------------- converted by torch
def test_converted_model_goes_through_every_stage(converted) -> None:
    cfg, result, model, data = converted
    assert [r.artifact.stage for r in result.records] == stage_names()
    assert all(r.status == "ran" for r in result.records)
    base = result.artifact("baseline").metrics
    assert base["source"] == "onnx" and base["form"] == "torch"
    _check_deliverables(result, _raw_images(data)[:4])


def test_converted_model_is_factorized_into_conv_chains(converted) -> None:
    _, result, _, _ = converted
    layers = json.loads((result.artifact("factorize").dir / "layers.json").read_text())
    done = [r for r in layers if r["status"] == "factorized"]
    assert done and all(r["format"] == "tucker2" for r in done)
    exp = result.artifact("export").dir
    n_orig = _ops(exp / "original.onnx").count("Conv")
    assert n_orig == 4
    assert _ops(result.deploy_dir / "model.onnx").count("Conv") == n_orig + 2 * len(done)  # 1x1 -> kxk -> 1x1


def test_converted_model_uses_pseudo_labels_and_distils_without_labels(converted) -> None:
    _, result, model, data = converted
    _check_pseudo_labels(result, model, data)
    fin = result.artifact("finetune")
    assert fin.metrics["method"] == "kd" and fin.metrics["labels"] == PSEUDO
    hist = json.loads((fin.dir / "history.json").read_text())
    assert len(hist["epochs"]) == 1 and "kd" in hist["epochs"][0]  # the distillation term was trained


def test_resumed_stage_reads_the_same_pseudo_labels(converted) -> None:
    cfg, first, _, _ = converted
    rerun = run(cfg, only="baseline", progress=False)  # same bytes (pseudo_labels.npz included): keys stay valid
    assert rerun.artifact("baseline").sha256 == first.artifact("baseline").sha256
    again = run(cfg, only="factorize", progress=False)  # baseline cached: labels come from pseudo_labels.npz
    assert [r.status for r in again.records] == ["cached", "ran"]
    a, b = first.artifact("factorize").metrics, again.artifact("factorize").metrics
    assert b["test_accuracy"] == a["test_accuracy"] and np.isfinite(b["test_accuracy"])
    assert all(r.status == "cached" for r in run(cfg, progress=False).records)


# -------------------------------------------------------------------------------------------- graph-level fallback
def test_fallback_model_uses_an_op_the_importer_lacks(fallback) -> None:
    _, _, model, _ = fallback
    ops = set(_ops(model))
    assert "Elu" in ops and "Elu" not in SUPPORTED_OPS
    assert {"BatchNormalization", "Clip", "HardSwish", "GlobalAveragePool", "Flatten", "Gemm"} <= ops


def test_fallback_goes_through_every_stage_on_the_graph(fallback) -> None:
    _, result, model, data = fallback
    assert [r.artifact.stage for r in result.records] == stage_names()
    base = result.artifact("baseline")
    assert base.metrics["form"] == "onnx_graph" and "Elu" in base.metrics["onnx_fallback"]
    assert (base.dir / "model.onnx").is_file() and not (base.dir / "model.safetensors").exists()
    _check_deliverables(result, _raw_images(data)[:4])
    _check_pseudo_labels(result, model, data)
    assert "Elu" in _ops(result.deploy_dir / "model.onnx")


def test_fallback_factorizes_conv_nodes_on_the_graph(fallback) -> None:
    _, result, _, _ = fallback
    fac = result.artifact("factorize")
    assert fac.metrics["form"] == "onnx_graph" and fac.metrics["layers_factorized"] >= 1
    assert fac.metrics["macs_after"] < fac.metrics["macs_before"]
    layers = json.loads((fac.dir / "layers.json").read_text())
    done = [r for r in layers if r["status"] == "factorized"]
    # The graph's fidelity was checked at half of benchmark.max_drop; each layer it moved says so.
    check = fac.metrics["fidelity_check"]
    assert check["passed"] and fac.metrics["layers_fallen_back"] == sum(bool(r["fallback"]) for r in layers)
    for r in layers:
        assert bool(r["fallback"]) == ("fidelity fallback" in r["reason"])
    assert {r["reason"] for r in layers if r["status"] == "dense"} >= {
        "first conv sees raw pixels (few input channels): kept dense (factorize.skip_first)"}
    graph = onnx.load(str(fac.dir / "model.onnx")).graph
    names = {n.name for n in graph.node if n.op_type == "Conv"}
    for r in done:  # each factorized node became a 1x1 -> kxk -> 1x1 chain
        assert {f"{r['name']}.{i}" for i in range(3)} <= names and r["name"] not in names
    assert _ops(result.deploy_dir / "model.onnx").count("Conv") == 4 + 2 * len(done)


def test_fallback_skips_finetuning_and_says_so(fallback) -> None:
    _, result, _, _ = fallback
    fin = result.artifact("finetune").metrics
    assert fin["skipped"] is True and fin["method"] == "skipped" and fin["configured_method"] == "kd"
    assert "cannot be trained" in fin["skip_reason"]
    log = (result.root / "run.log").read_text()
    assert "finetune skipped" in log and "WARNING" in log
    md = (result.deploy_dir / "report.md").read_text()
    assert "Finetuning skipped" in md and "ONNX graph fallback" in md
    parity = result.artifact("export").metrics["model.onnx"]["parity"]
    assert [b["batch"] for b in parity["batches"]] == [1, 4]


# ------------------------------------------------------------------------------------------- unlabelled data errors
def test_unlabelled_data_without_weights_asks_for_labels(tmp_path: Path) -> None:
    from pipeline.errors import InputError

    data = _unlabelled_npz(tmp_path / "images.npz", n=40)
    cfg = fast_config(tmp_path / "a", model="tiny", data=f"npz:{data}")
    with pytest.raises(InputError, match=r"no labels.*--weights.*model\.onnx"):
        run(cfg, progress=False)
    assert not list((tmp_path / "a" / "tiny").glob("00-baseline-*"))


def test_unlabelled_data_with_weights_gets_pseudo_labels(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from pipeline.models import build_model

    data = _unlabelled_npz(tmp_path / "images.npz", n=40)
    net = build_model("tiny", 7, 3, SIZE)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    cfg = fast_config(tmp_path / "a", model="tiny", data=f"npz:{data}", weights=str(tmp_path / "w.safetensors"))
    result = run(cfg, progress=False, upto="baseline")
    base = result.artifact("baseline")
    assert base.metrics["source"] == "weights" and base.metrics["labels"] == PSEUDO
    assert base.metrics["test_accuracy"] == 1.0
    assert json.loads((base.dir / "model.json").read_text())["num_classes"] == 7  # read from the checkpoint
    # Pretrained zoo/.py models keep the dataset normalisation (only ONNX models are fed raw images).
    assert json.loads((base.dir / "model.json").read_text())["std"] != [1.0, 1.0, 1.0]
