"""The four test models of :mod:`tests.helpers.wild_models`, exported as converters write them (Constant-node weights,
opset 11 and 18, dynamic batch): import parity with ONNX Runtime, head kinds detected from their outputs, the gate
on original-vs-perturbed pairs (small noise passes, zeroed weights are refused), label accuracy and distillation."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pipeline.heads import (FidelityGateError, Measurement, detect_heads, distill_loss_fn, gate_variants,
                            label_accuracy, multi_fidelity)
from pipeline.heads.fidelity import ctc_greedy_decode
from pipeline.models.onnx import onnx_to_torch
from tests.helpers.wild_models import WILD_MODELS, export_wild, make_model, sample_inputs

NAMES = list(WILD_MODELS)
# ops each export must contain: what makes it "from the wild" for the importer
EXPECTED_OPS = {"dense_text": {"ConvTranspose", "Resize", "Sigmoid"},
                "ctc_recognizer": {"MaxPool", "ReduceMean", "Transpose", "MatMul", "Softmax"},
                "multi_head": {"Gemm", "Sqrt", "Div", "ReduceMean"},
                "dw_separable": {"GlobalAveragePool", "HardSigmoid", "Mul"}}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    d = tmp_path_factory.mktemp("wild")
    return {(n, o): export_wild(make_model(WILD_MODELS[n]), WILD_MODELS[n], d / f"{n}{o}.onnx", o)
            for n in NAMES for o in (11, 18)}


def _ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _outs(y) -> list[torch.Tensor]:
    return list(y) if isinstance(y, tuple) else [y]


@pytest.mark.parametrize("opset", [11, 18])
@pytest.mark.parametrize("name", NAMES)
def test_export_imports_with_parity_and_its_kind_is_detected(files, name: str, opset: int) -> None:
    spec, path = WILD_MODELS[name], files[(name, opset)]
    raw = onnx.load(str(path))
    assert len(raw.graph.initializer) == 0 and any(n.op_type == "Constant" for n in raw.graph.node)
    assert EXPECTED_OPS[name] <= {n.op_type for n in raw.graph.node}
    if name == "dw_separable":
        assert any(a.name == "group" and a.i > 1 for n in raw.graph.node if n.op_type == "Conv" for a in n.attribute)
    model = onnx_to_torch(path)
    probes = {}
    for batch in (1, 3):                                   # dynamic batch
        x = sample_inputs(spec, batch, seed=batch)
        want = _ort(path, x)
        with torch.no_grad():
            got = _outs(model(torch.from_numpy(x)))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), w, atol=1e-4, rtol=1e-4)
        probes[batch] = want
    heads = detect_heads(probes[1], 1, probes[3], 3, names=[o.name for o in raw.graph.output],
                         input_hw=spec.input_shape[1:])
    assert tuple(h.kind for h in heads) == spec.kinds and tuple(h.layout for h in heads) == spec.layouts
    if name == "dense_text":
        assert heads[0].values == "prob" and heads[0].num_classes == 1
    if name == "ctc_recognizer":
        assert heads[0].num_classes == 11 and heads[0].values == "prob"


def _variant(net: nn.Module, how: str, only: str | None = None) -> nn.Module:
    """A copy with every weight (or those of layer ``only``) jittered by 1e-4 relative noise, or zeroed."""
    v = copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    layers = [m for n, m in v.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
              and (only is None or n == only)]
    with torch.no_grad():
        for m in layers:
            m.weight.copy_(m.weight * (1 + 1e-4 * torch.randn(m.weight.shape, generator=g)) if how == "noise"
                           else torch.zeros_like(m.weight))
    return v


def _measure(name: str, path: Path, heads, ref, x) -> Measurement:
    # speed is not what these tests check (no timing asserts): equal p50, no samples -> "speed not claimed"
    return Measurement(name, path.name, path.stat().st_size, 1.0, tuple(multi_fidelity(heads, ref, _ort(path, x))))


@pytest.mark.parametrize("name", NAMES)
def test_gate_passes_small_noise_and_refuses_zeroed_weights(files, tmp_path: Path, name: str) -> None:
    spec = WILD_MODELS[name]
    net = make_model(spec)
    x = sample_inputs(spec, 128, seed=5)
    ref = _ort(files[(name, 18)], x)
    heads = detect_heads(ref, 128, _ort(files[(name, 18)], x[:3]), 3, names=spec.output_names,
                         input_hw=spec.input_shape[1:])
    orig = Measurement("original", "original.onnx", files[(name, 18)].stat().st_size, 1.0,
                       tuple({"name": h.name, "kind": h.kind} for h in heads))
    noisy = _measure("noisy", export_wild(_variant(net, "noise"), spec, tmp_path / "noisy.onnx", 18), heads, ref, x)
    zeroed = _measure("zeroed", export_wild(_variant(net, "zero"), spec, tmp_path / "zero.onnx", 18), heads, ref, x)
    res = gate_variants(orig, [zeroed, noisy])
    assert res.passing == {"cpu": ["noisy"]} and res.shipped["cpu"].variant == "noisy"
    assert "zeroed refused by the gate" in res.headline["cpu"] and "faster" not in res.headline["cpu"]
    with pytest.raises(FidelityGateError, match="zeroed"):
        gate_variants(orig, [zeroed])


def test_multi_output_refused_on_its_worst_output(files, tmp_path: Path) -> None:
    spec = WILD_MODELS["multi_head"]
    x = sample_inputs(spec, 64, seed=6)
    ref = _ort(files[("multi_head", 11)], x)
    heads = detect_heads(ref, 64, _ort(files[("multi_head", 11)], x[:2]), 2, names=spec.output_names)
    broken = _variant(make_model(spec), "zero", only="emb")          # the logits are untouched
    m = _measure("no_emb", export_wild(broken, spec, tmp_path / "no_emb.onnx", 11), heads, ref, x)
    assert m.outputs[0]["agreement"] == 1.0 and m.outputs[1]["cosine"] < 0.9
    orig = Measurement("original", "o.onnx", 1, 1.0, tuple({"name": h.name, "kind": h.kind} for h in heads))
    with pytest.raises(FidelityGateError, match="embedding cosine"):
        gate_variants(orig, [m])


def test_label_accuracy_on_model_outputs(files) -> None:
    # labels made from the original's own decisions: the original scores 1.0, a shifted map does not
    for name in ("dense_text", "ctc_recognizer"):
        spec = WILD_MODELS[name]
        x = sample_inputs(spec, 8, seed=7)
        out = _ort(files[(name, 18)], x)
        head = detect_heads(out, 8, _ort(files[(name, 18)], x[:3]), 3, input_hw=spec.input_shape[1:])[0]
        if name == "dense_text":
            labels = (out[0][:, 0] > 0.5).astype(np.int64)
            assert label_accuracy(head, out[0], labels) == {"accuracy": 1.0, "miou": 1.0, "pixel_acc": 1.0}
            assert label_accuracy(head, out[0], np.roll(labels, 7, axis=2))["miou"] < 0.9
        else:
            labels = ctc_greedy_decode(head.canonical(out[0]))
            assert label_accuracy(head, out[0], labels) == {"accuracy": 1.0}
            assert label_accuracy(head, out[0], [s[:-1] for s in labels])["accuracy"] < 1.0


@pytest.mark.parametrize("name", ["dense_text", "ctc_recognizer", "multi_head"])
def test_distillation_from_raw_outputs_pulls_a_perturbed_import_back(files, name: str) -> None:
    spec = WILD_MODELS[name]
    path = files[(name, 11)]
    teacher, student = onnx_to_torch(path), onnx_to_torch(path).train()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
    x = torch.from_numpy(sample_inputs(spec, 16, seed=8))
    with torch.no_grad():
        t_out, t_small = _outs(teacher(x)), _outs(teacher(x[:3]))
    heads = detect_heads([t.numpy() for t in t_out], 16, [t.numpy() for t in t_small], 3,
                         names=spec.output_names, input_hw=spec.input_shape[1:])
    loss_fn = distill_loss_fn(heads)
    primary = {"dense": "iou", "sequence": "step_agreement", "classify": "agreement", "embedding": "cosine"}

    def fidelity() -> list[float]:
        with torch.no_grad():
            outs = [o.numpy() for o in _outs(student(x))]
        return [m[primary[m["kind"]]] for m in multi_fidelity(heads, [t.numpy() for t in t_out], outs)]

    before = fidelity()
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(_outs(student(x)), t_out)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = fidelity()
    # BCE against soft targets bottoms out at the teacher's entropy, not 0: judge by the loss falling and the fidelity
    # metric (the gate's own measure) rising
    assert losses[-1] < losses[0], losses
    assert sum(after) > sum(before) and min(a - b for a, b in zip(after, before)) >= -0.01, (before, after)


def test_measure_helpers_run_all_outputs_and_fill_measurements(files, tmp_path: Path) -> None:
    from pipeline.heads.measure import onnx_outputs, output_entries, probe_onnx_heads

    spec = WILD_MODELS["ctc_recognizer"]
    x = sample_inputs(spec, 10, seed=9)
    heads = probe_onnx_heads(files[("ctc_recognizer", 11)], x)
    assert [(h.kind, h.layout) for h in heads] == [("sequence", "TNK")]
    ref = onnx_outputs(files[("ctc_recognizer", 11)], x, heads, batch=4)    # 3 batches joined on axis 1 (TNK)
    np.testing.assert_allclose(ref[0], _ort(files[("ctc_recognizer", 11)], x)[0], atol=1e-6)
    labels = ctc_greedy_decode(heads[0].canonical(ref[0]))
    orig = output_entries(heads, ref, labels=[labels])
    assert orig == ({"name": "ctc_logits", "kind": "sequence", "accuracy": 1.0},)
    zero = export_wild(_variant(make_model(spec), "zero"), spec, tmp_path / "z.onnx", 11)
    var = output_entries(heads, ref, onnx_outputs(zero, x, heads), labels={"ctc_logits": labels})
    assert var[0]["exact"] == 0.0 and var[0]["accuracy"] < 1.0
    res = Measurement("original", "o.onnx", 1, 1.0, orig)
    with pytest.raises(FidelityGateError, match="accuracy drop"):              # labelled: gated on the drop
        gate_variants(res, [Measurement("zero", "z.onnx", 1, 1.0, var)])
