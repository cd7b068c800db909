"""The graph path's fidelity fallback (pipeline.factorize.graph_fallback): a graph the torch importer cannot convert
(an ``Elu`` between its convs), factorized at energy 0.6 with no finetuning, breaks its outputs; the fallback raises
the rank of its most damaging layers until the whole graph meets half of the allowed loss, and records why."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.config import FactorizeConfig, build_config
from pipeline.factorize.graph_fallback import factorize_graph_checked, half_loss_criteria, ladder
from pipeline.factorize.onnx_graph import factorize_graph
from pipeline.heads.kinds import HeadSpec
from pipeline.models import load_onnx_model
from pipeline.models.onnx import unsupported_ops
from pipeline.models.ort_graph import OrtGraphModel
from pipeline.runner import run
from tests.helpers.ort import session

SIZE, CLASSES = 12, 10
CFG = FactorizeConfig(energy=0.6, skip_first=False, min_channels=1, align=1, min_mac_saving=0.0)
LOGITS = HeadSpec(name="logits", kind="classify", layout="NK", num_classes=CLASSES)
MAP = HeadSpec(name="map", kind="dense", layout="NCHW", values="prob", num_classes=1)


def _conv(rng: np.random.Generator, n: int, c: int, rank: int = 8) -> np.ndarray:
    """A kernel of Tucker rank ``rank`` in both channel modes (a flat spectrum there, plus a faint full-rank
    tail): energy 0.6 keeps ~60% of the rank and breaks the layer, energy 0.9 keeps all of it."""
    u = np.linalg.qr(rng.standard_normal((n, n)))[0][:, :min(rank, n)]
    v = np.linalg.qr(rng.standard_normal((c, c)))[0][:, :min(rank, c)]
    core = rng.standard_normal((u.shape[1], v.shape[1], 3, 3))
    core /= np.linalg.norm(core.reshape(core.shape[0], -1), axis=1)[:, None, None, None]  # equal mode energies
    w = np.einsum("nr,rskl,cs->nckl", u, core, v) + 1e-4 * rng.standard_normal((n, c, 3, 3))
    return (w * np.sqrt(2.0 * n / (c * 9)) / np.sqrt((w ** 2).mean() * n)).astype(np.float32)


def _features(nodes: list, inits: list) -> np.ndarray:
    """The pooled features ``f`` of the graph so far on varied images (to calibrate the classifier head)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])
    m = helper.make_model(helper.make_graph(nodes, "features", [x],
                                            [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["n", 64])], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return session(m.SerializeToString()).run(None, {"x": _images(256, seed=9)})[0].astype(np.float64)


def _elu_net(head: str, seed: int = 0, act: str = "Elu") -> onnx.ModelProto:
    """x -> 4 x (Conv 3x3 + Elu) -> GAP -> Gemm logits (``classify``) or Conv 1x1 -> Sigmoid map (``dense``);
    ``act="Relu"`` gives a graph the torch importer converts."""
    rng = np.random.default_rng(seed)
    widths = [3, 32, 48, 48, 64]
    nodes, inits, cur = [], [], "x"
    for i, (c, n) in enumerate(zip(widths, widths[1:])):
        inits += [numpy_helper.from_array(_conv(rng, n, c), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node(act, [f"c{i}"], [f"e{i}"], name=f"act{i}")]
        cur = f"e{i}"
    if head == "classify":
        nodes += [helper.make_node("GlobalAveragePool", [cur], ["g"]), helper.make_node("Flatten", ["g"], ["f"])]
        # A head on standardised features (as a trained one would be): predictions spread over the classes.
        f = _features(nodes, inits)
        w = rng.standard_normal((CLASSES, 64)) / (f.std(0).mean() * 8.0) * 3.0
        inits += [numpy_helper.from_array(w.astype(np.float32), "fc"),
                  numpy_helper.from_array((-(w @ f.mean(0))).astype(np.float32), "fcb")]
        nodes += [helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1)]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", CLASSES])
    else:
        inits += [numpy_helper.from_array((rng.standard_normal((1, 64, 1, 1)) * 3.0).astype(np.float32), "wm")]
        nodes += [helper.make_node("Conv", [cur, "wm"], ["m"], name="head", kernel_shape=[1, 1]),
                  helper.make_node("Sigmoid", ["m"], ["map"])]
        out = helper.make_tensor_value_info("map", TensorProto.FLOAT, ["n", 1, SIZE, SIZE])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])
    model = helper.make_model(helper.make_graph(nodes, "elu_net", [x], [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _images(n: int, seed: int = 1) -> np.ndarray:
    """Noise with per-image colour casts and contrast, in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 3, SIZE, SIZE)) * rng.uniform(0.2, 1, (n, 3, 1, 1)) + rng.uniform(0, 0.5, (n, 3, 1, 1))
    return np.clip(x, 0, 1).astype(np.float32)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(model.SerializeToString()).run(None, {"x": x})[0]


def _agreement(model: onnx.ModelProto, original: onnx.ModelProto, x: np.ndarray) -> float:
    return float(np.mean(_run(model, x).argmax(1) == _run(original, x).argmax(1)))


def _iou(model: onnx.ModelProto, original: onnx.ModelProto, x: np.ndarray) -> float:
    a, b = _run(model, x) > 0.5, _run(original, x) > 0.5
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_the_model_cannot_be_imported() -> None:
    assert "Elu" in unsupported_ops(_elu_net("classify"))


def test_half_loss_bounds() -> None:
    crit = half_loss_criteria(0.02)
    assert crit.max_drop == pytest.approx(1.0)  # points: half of 2
    assert crit.bounds("classify")["agreement"] == pytest.approx(0.99)
    assert crit.bounds("dense")["iou"] == pytest.approx(0.95)  # the 0.90 floor, half-way to 1
    assert crit.bounds("embedding")["cosine"] == pytest.approx(0.995)


def test_ladder_goes_up_from_the_configured_energy() -> None:
    assert [label for label, _ in ladder(CFG)] == ["energy 0.6", "energy 0.9", "energy 0.97"]
    assert [label for label, _ in ladder(dataclasses.replace(CFG, energy=0.95))] == ["energy 0.95", "energy 0.97"]
    assert [c.energy for _, c in ladder(dataclasses.replace(CFG, selector="fixed"))][1:] == [0.9, 0.97]


@pytest.mark.parametrize("head", ["classify", "dense"])
def test_fallback_restores_fidelity_and_records_why(head: str) -> None:
    model, x = _elu_net(head), _images(64)
    spec, metric = (LOGITS, _agreement) if head == "classify" else (MAP, _iou)
    bound = 0.99 if head == "classify" else 0.95  # max_drop 0.02: half the loss
    # Energy 0.6 alone, as the graph path used to ship it: the outputs break.
    blind, blind_rows, _ = factorize_graph(model, CFG, (3, SIZE, SIZE))
    assert sum(r.status == "factorized" for r in blind_rows) == 4
    assert metric(blind, model, x) < bound
    res = factorize_graph_checked(model, CFG, (3, SIZE, SIZE), [spec], x, max_drop=0.02)
    assert res.passed and res.fallbacks and res.rounds >= 2
    # The hand computation on the same images agrees with the fallback's own check.
    assert metric(res.model, model, x) >= bound
    assert res.initial and not all(c["passed"] for c in res.initial)
    rows = {r.name: r for r in res.rows}
    for name, steps in res.fallbacks.items():
        assert steps.startswith("energy 0.6 -> ")
        assert "fidelity fallback energy 0.6 -> " in rows[name].reason and "half of benchmark.max_drop" in rows[name].reason
        if steps.endswith("dense"):
            assert rows[name].status == "dense" and rows[name].macs_after == rows[name].macs_before
    blind_ranks = {r.name: r.ranks for r in blind_rows}
    for name, r in rows.items():
        if name not in res.fallbacks:
            assert r.ranks == blind_ranks[name]  # layers that did not fall back keep their energy-0.6 ranks
    assert res.summary()["layers_fallen_back"] == len(res.fallbacks)
    # Rank 8 is all these kernels hold: higher energies keep it, so layers stay factorized at a higher rank
    # instead of all going dense, and the graph still saves MACs.
    assert any(rows[n].status == "factorized" and rows[n].ranks != blind_ranks[n] for n in res.fallbacks)
    assert sum(r.macs_after for r in res.rows) < sum(r.macs_before for r in res.rows)
    onnx.checker.check_model(res.model, full_check=True)


def test_a_graph_that_already_passes_is_left_alone() -> None:
    model, x = _elu_net("classify"), _images(32)
    high = dataclasses.replace(CFG, energy=0.999)
    res = factorize_graph_checked(model, high, (3, SIZE, SIZE), [LOGITS], x, max_drop=0.5)
    assert res.passed and res.rounds == 1 and not res.fallbacks
    plain, rows, _ = factorize_graph(model, high, (3, SIZE, SIZE))
    assert [r.ranks for r in res.rows] == [r.ranks for r in rows]
    np.testing.assert_allclose(_run(res.model, x), _run(plain, x), rtol=1e-5, atol=1e-5)


def test_onnx_form_graph_forces_the_graph_path(tmp_path) -> None:
    model = _elu_net("classify", act="Relu")
    path = tmp_path / "relu_net.onnx"
    onnx.save(model, str(path))
    assert not unsupported_ops(model)
    auto, why = load_onnx_model(str(path), (3, SIZE, SIZE))
    assert why is None and not isinstance(auto, OrtGraphModel)
    forced, why = load_onnx_model(str(path), (3, SIZE, SIZE), form="graph")
    assert isinstance(forced, OrtGraphModel) and "onnx_form=graph" in why


def test_the_stage_checks_the_graph_and_records_each_fallback(tmp_path) -> None:
    """baseline.onnx_form=graph on an importable model, through baseline and factorize: the stage's graph meets
    half of max_drop on validation images, and every moved layer is in layers.json and the metrics."""
    model = _elu_net("classify", act="Relu")
    path = tmp_path / "relu_net.onnx"
    onnx.save(model, str(path))
    imgs = _images(160, seed=3).transpose(0, 2, 3, 1)  # HWC, as image files store them
    np.savez(tmp_path / "x.npz", x=(imgs * 255).round().astype(np.uint8))
    cfg = build_config(None, ["baseline.onnx_form=graph", "benchmark.max_drop=0.02", "factorize.min_channels=1",
                              "factorize.skip_first=false", "factorize.align=1", "factorize.min_mac_saving=0"],
                       model=str(path), data=f"npz:{tmp_path / 'x.npz'}", artifacts=str(tmp_path / "art"))
    result = run(cfg, progress=False, upto="factorize")
    assert result.artifact("baseline").metrics["form"] == "onnx_graph"
    fac = result.artifact("factorize")
    rows = {r["name"]: r for r in json.loads((fac.dir / "layers.json").read_text())}
    moved = [r for r in rows.values() if r["fallback"]]
    assert moved and fac.metrics["layers_fallen_back"] == len(moved) and fac.metrics["fidelity_check"]["passed"]
    assert all("fidelity fallback" in r["reason"] for r in moved)
    check = fac.metrics["fidelity_check"]
    assert check["checks"][0]["metric"] == "agreement" and check["checks"][0]["value"] >= 0.99
    assert check["initial_checks"][0]["value"] < 0.99
    # The graph that was checked is the graph the stage saved.
    shipped = onnx.load(str(fac.dir / "model.onnx"))
    x = _images(16, seed=5)
    assert _agreement(shipped, model, x) >= 0.9


def test_far_from_the_bound_an_eighth_of_the_layers_move_per_check() -> None:
    from pipeline.factorize.graph_fallback import _moves
    from pipeline.heads.gate import Check, Verdict

    def verdict(value: float) -> Verdict:
        return Verdict("factorized", "cpu", (Check("logits", "agreement", value, ">=", 0.99),))

    assert _moves(verdict(0.50), 16) == 2  # misses by 0.49, far more than 3 x the 0.01 it may lose
    assert _moves(verdict(0.975), 16) == 1  # within 3 x: one layer per check
    assert _moves(verdict(0.50), 5) == 1
    assert _moves(Verdict("f", "cpu", (Check("map", "mae", 0.5, "<=", 0.05),)), 40) == 5
