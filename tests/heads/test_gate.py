"""The fidelity gate: bounds per kind, broken variants refused, the fastest passing variant ships per target, the
headline never calls a slower model faster, and nothing passing is an error."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.heads import FidelityGateError, GateCriteria, Measurement, gate_variants
from pipeline.heads.gate import check_variant


def _lat(median_ms: float, seed: int, n: int = 200) -> list[float]:
    return list(median_ms * np.exp(np.random.default_rng(seed).normal(0.0, 0.05, n)))


ORIG = Measurement("original", "original.onnx", 4_000_000, 10.0, ({"name": "logits", "kind": "classify"},),
                   samples_ms=_lat(10.0, 0))


def _cls(name: str, agreement: float, p50: float, size: int, seed: int, label: str = "") -> Measurement:
    return Measurement(name, f"{name}.onnx", size, p50, ({"name": "logits", "kind": "classify", "agreement": agreement},),
                       samples_ms=_lat(p50, seed), label=label)


def test_default_bounds_per_kind() -> None:
    c = GateCriteria()
    assert c.bounds("classify") == {"agreement": 0.99}
    assert c.bounds("dense") == {"iou": 0.90}
    assert c.bounds("sequence") == {"step_agreement": 0.99, "exact": 0.90}
    assert c.bounds("embedding") == {"cosine": 0.99}
    c = GateCriteria(max_drop=5.0, floors={"dense": {"iou": 0.8, "mae": 0.05}})
    assert c.bounds("classify") == {"agreement": 0.95} and c.bounds("dense") == {"iou": 0.8, "mae": 0.05}


def test_int8_slower_ships_fp32_decomposed_and_says_so() -> None:
    fp32 = _cls("finetuned", 0.995, 8.0, 1_000_000, 1, label="fp32 decomposed")
    int8 = _cls("int8", 0.992, 25.0, 400_000, 2)                     # passes, but 2.5x slower than the original
    broken = _cls("broken", 0.10, 2.0, 300_000, 3)                   # fastest, but refused
    res = gate_variants(ORIG, [fp32, int8, broken])
    assert res.passing == {"cpu": ["finetuned", "int8"]}
    ship = res.shipped["cpu"]
    assert ship.variant == "finetuned" and ship.speed_verdict == "faster"
    assert ship.smaller == pytest.approx(4.0) and ship.speed_ratio == pytest.approx(1.25, rel=0.05)
    text = res.headline["cpu"]
    assert text.startswith("cpu: ships fp32 decomposed (finetuned.onnx): 4.00x smaller, 1.2")
    assert "int8 also meets the gate but is slower here (0.40x the original's speed" in text
    assert "broken refused by the gate: logits top-1 agreement 0.1000 (gate >= 0.99)" in text
    assert res.as_dict()["shipped"]["cpu"]["variant"] == "finetuned"


def test_slower_shipped_model_is_never_called_faster() -> None:
    res = gate_variants(ORIG, [_cls("int8", 0.999, 13.0, 1_000_000, 4)])
    ship = res.shipped["cpu"]
    assert ship.speed_verdict == "slower" and ship.speed_ratio < 1
    assert "faster" not in res.headline["cpu"] and "slower: 0.7" in res.headline["cpu"]
    same = gate_variants(ORIG, [_cls("int8", 0.999, 10.02, 1_000_000, 5)]).headline["cpu"]
    assert "no measurable speed change" in same and "faster" not in same
    unmeasured = Measurement("int8", "int8.onnx", 1_000_000, 5.0, ORIG.outputs[:0] + (
        {"name": "logits", "kind": "classify", "agreement": 1.0},))
    text = gate_variants(ORIG, [unmeasured]).headline["cpu"]
    assert "speed not claimed" in text and "faster" not in text


def test_nothing_passing_raises_with_every_reason() -> None:
    with pytest.raises(FidelityGateError) as err:
        gate_variants(ORIG, [_cls("int8", 0.5, 5.0, 1, 6), _cls("finetuned", 0.98, 6.0, 2, 7)])
    msg = str(err.value)
    assert isinstance(err.value, PipelineError) and err.value.exit_code != 0
    assert "nothing ships" in msg and "int8: logits top-1 agreement 0.5000" in msg and "finetuned:" in msg
    assert "max_drop" in msg and "Fix:" in msg


def test_labelled_outputs_gate_on_the_accuracy_drop() -> None:
    orig = Measurement("original", "o.onnx", 100, 10.0, ({"name": "map", "kind": "dense", "accuracy": 0.80},))
    ok = Measurement("a", "a.onnx", 50, 9.0, ({"name": "map", "kind": "dense", "iou": 0.5, "accuracy": 0.795},))
    bad = Measurement("b", "b.onnx", 50, 8.0, ({"name": "map", "kind": "dense", "iou": 0.99, "accuracy": 0.78},))
    v_ok, v_bad = check_variant(ok, orig, GateCriteria()), check_variant(bad, orig, GateCriteria())
    assert v_ok.passed and not v_bad.passed                          # 0.5 and 2.0 points against max_drop 1
    assert "accuracy drop 2.00 points (gate <= 1)" in v_bad.reason()
    assert gate_variants(orig, [ok, bad]).shipped["cpu"].variant == "a"


def test_multi_output_gates_on_the_worst_output() -> None:
    orig = Measurement("original", "o.onnx", 100, 10.0, ({"name": "logits", "kind": "classify"},
                                                          {"name": "embedding", "kind": "embedding"}))
    good = Measurement("v", "v.onnx", 50, 9.0, ({"name": "logits", "kind": "classify", "agreement": 1.0},
                                                {"name": "embedding", "kind": "embedding", "cosine": 0.995}))
    v = check_variant(good, orig, GateCriteria())
    assert v.passed and v.worst is not None and (v.worst.output, v.worst.metric) == ("embedding", "cosine")
    bad_emb = Measurement("w", "w.onnx", 50, 9.0, ({"name": "logits", "kind": "classify", "agreement": 1.0},
                                                   {"name": "embedding", "kind": "embedding", "cosine": 0.9}))
    assert not check_variant(bad_emb, orig, GateCriteria()).passed
    missing = Measurement("x", "x.onnx", 50, 9.0, ({"name": "logits", "kind": "classify", "agreement": 1.0},))
    assert not check_variant(missing, orig, GateCriteria()).passed   # an unmeasured output never passes
    nan = Measurement("y", "y.onnx", 50, 9.0, ({"name": "logits", "kind": "classify", "agreement": float("nan")},
                                               {"name": "embedding", "kind": "embedding", "cosine": 1.0}))
    assert not check_variant(nan, orig, GateCriteria()).passed


def test_per_target_choice() -> None:
    mobile = Measurement("original", "original.onnx", 4_000_000, 30.0, ORIG.outputs, target="mobile",
                         samples_ms=_lat(30.0, 8))
    cands = [_cls("finetuned", 1.0, 8.0, 1_000_000, 9), _cls("int8", 1.0, 12.0, 400_000, 10)]
    m_cands = [Measurement(c.name, c.file, c.size_bytes, p, c.outputs, target="mobile", samples_ms=_lat(p, 11 + i))
               for i, (c, p) in enumerate(zip(cands, (20.0, 10.0)))]
    res = gate_variants([ORIG, mobile], cands + m_cands)
    assert res.shipped["cpu"].variant == "finetuned" and res.shipped["mobile"].variant == "int8"
    assert set(res.headline) == {"cpu", "mobile"}
    with pytest.raises(FidelityGateError, match="target mobile: no candidate"):
        gate_variants([ORIG, mobile], cands)
