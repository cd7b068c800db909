"""Comparison logic of ``make arm64-check`` (scripts/arm64/compare.py), on x86: pure numpy, plus one real ORT file."""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "arm64", "compare.py")
_spec = importlib.util.spec_from_file_location("arm64_compare", _PATH)
compare = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = compare  # dataclasses look their module up while the file executes
_spec.loader.exec_module(compare)

STEP = 0.47


def _logits(seed: int = 0, rows: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 10)).astype(np.float32) * 4


def test_identical_fp32_is_exact_pass():
    ref = _logits()
    row = compare.compare_graph("model.onnx", {"logits": ref}, {"logits": ref.copy()})
    assert row["verdict"] == "pass" and row["exact"] and row["max_abs_diff"] == 0.0
    assert row["argmax_agree"] == 1.0


def test_fp32_within_and_beyond_tolerance():
    ref = _logits()
    small = ref + np.float32(2e-5)
    assert compare.compare_graph("model.ort", {"logits": ref}, {"logits": small})["verdict"] == "pass"
    big = ref.copy()
    big[3, 2] += 1e-2
    row = compare.compare_graph("model.ort", {"logits": ref}, {"logits": big})
    assert row["verdict"] == "FAIL" and "atol" in row["why"]
    assert row["max_abs_diff"] == pytest.approx(1e-2, rel=1e-3)


def test_fp32_argmax_flip_fails_even_within_tolerance():
    ref = np.array([[1.0, 1.00005, 0.0]], dtype=np.float32)
    got = np.array([[1.00005, 1.0, 0.0]], dtype=np.float32)
    row = compare.compare_graph("model.onnx", {"y": ref}, {"y": got})
    assert row["argmax_agree"] == 0.0 and row["verdict"] == "FAIL" and "argmax" in row["why"]


def _quantised(x: np.ndarray) -> np.ndarray:
    return (np.round(x / STEP) * STEP).astype(np.float32)


def test_int8_judged_in_steps_from_the_graph_semantics():
    sem = _quantised(_logits())
    x86 = sem.copy()
    x86[0, :3] += 5 * STEP  # x86 kernel far from the semantics (e.g. u8s8 saturation)
    arm = sem.copy()
    arm[1, 4] -= STEP  # arm64 one requantisation step away
    row = compare.compare_graph("model.int8.onnx", {"logits": x86}, {"logits": arm}, {"logits": sem},
                                {"logits": STEP})
    assert row["verdict"] == "pass"
    assert row["arm64_steps_from_semantics"] == 1.0 and row["x86_steps_from_semantics"] == 5.0
    assert row["max_abs_diff"] == pytest.approx(5 * STEP, rel=1e-5)
    arm[2, 0] += 2 * STEP
    row = compare.compare_graph("model.int8.ort", {"logits": x86}, {"logits": arm}, {"logits": sem},
                                {"logits": STEP})
    assert row["verdict"] == "FAIL" and row["arm64_steps_from_semantics"] == 2.0 and "QDQ" in row["why"]


def test_int8_without_semantics_must_be_exact():
    ref = _quantised(_logits())
    assert compare.compare_graph("model.int8.onnx", {"y": ref}, {"y": ref.copy()})["verdict"] == "pass"
    off = ref.copy()
    off[0, 0] += STEP
    assert compare.compare_graph("model.int8.onnx", {"y": ref}, {"y": off})["verdict"] == "FAIL"


def test_shape_mismatch_and_missing_output_fail():
    ref = _logits()
    row = compare.compare_graph("model.onnx", {"logits": ref}, {"logits": ref[:4]})
    assert row["verdict"] == "FAIL" and "shape" in row["why"]
    row = compare.compare_graph("model.onnx", {"logits": ref, "aux": ref}, {"logits": ref})
    assert row["verdict"] == "FAIL" and "aux missing" in row["why"]


def test_nan_outputs():
    ref = _logits()
    ref[0, 0] = np.nan
    assert compare.compare_graph("model.onnx", {"y": ref}, {"y": ref.copy()})["verdict"] == "pass"
    got = ref.copy()
    got[0, 0] = 0.0
    assert compare.compare_graph("model.onnx", {"y": ref}, {"y": got})["verdict"] == "FAIL"


def test_seeded_inputs_are_deterministic_and_fill_the_batch():
    a = compare.seeded_inputs(["batch", 1, 32, 32], seed=3, batch=5)
    b = compare.seeded_inputs([None, 1, 32, 32], seed=3, batch=5)
    assert a.shape == (5, 1, 32, 32) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, compare.seeded_inputs(["batch", 1, 32, 32], seed=4, batch=5))
    with pytest.raises(ValueError, match="symbolic"):
        compare.seeded_inputs([1, 1, "h", 32])


def test_table_lists_every_file_and_the_failure_reason():
    ref = _logits()
    rows = [compare.compare_graph("model.onnx", {"y": ref}, {"y": ref}),
            compare.error_row("model.int8.ort", "could not load it: bad format")]
    table = compare.format_table(rows)
    assert "model.onnx" in table and "model.int8.ort" in table and "FAIL" in table
    assert "could not load it: bad format" in table


def test_ort_format_version_of_a_real_ort_file(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "m.ort")
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    data = (tmp_path / "m.ort").read_bytes()
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    expected = InferenceSession.InferenceSession.GetRootAsInferenceSession(data, 0).OrtVersion().decode()
    assert compare.ort_format_version(data) == expected and expected.isdigit()
    assert compare.ort_format_version(src.read_bytes()) is None  # an ONNX protobuf is no ORT file
    assert compare.ort_format_version(data[:16]) is None  # truncated: no crash
