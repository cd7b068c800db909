"""Weight widths fitted to an accuracy floor: the rate-distortion path, its bisection, and the real int8 fit."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest

from pipeline.config import QuantizeConfig
from pipeline.entropy.container import pack_onnx
from pipeline.quantize.bit_fit import entropy_bits, greedy_path, longest_accepted
from pipeline.quantize.ort_static import quantize_static
from pipeline.quantize.weights import apply_weight_bits_to_qdq, grid_multiplier
from tests.quantize.tiny_models import export, images, run, tiny_net
from tests.helpers.onnx_models import qdq_weight


def test_entropy_bits_matches_the_formula() -> None:
    q = np.array([0, 0, 0, 0, 1, 1, -1, 5], dtype=np.int8)
    p = np.array([4, 2, 1, 1]) / 8
    assert entropy_bits(q) == pytest.approx(-8 * float((p * np.log2(p)).sum()))
    assert entropy_bits(np.zeros(10, np.int8)) == 0.0 and entropy_bits(np.zeros(0, np.int8)) == 0.0


def test_grid_multiplier_is_a_power_of_two_inside_the_range() -> None:
    for qmax in (127, 64):
        for b in range(2, 9):
            m, lvl = grid_multiplier(b, qmax), min(2 ** (b - 1) - 1, qmax)
            assert m & (m - 1) == 0 and m * lvl <= qmax and 2 * m * lvl > qmax


def test_greedy_path_narrows_the_cheap_layers_first() -> None:
    numel = {"big_robust": 1000, "big_sensitive": 1000, "small": 10}
    sens = {"big_robust": 0.01, "big_sensitive": 10.0, "small": 0.01}
    calls: list[tuple[str, int]] = []

    def distortion(k: str, b: int) -> float:
        calls.append((k, b))
        return sens[k] * 4.0 ** (8 - b)

    path = greedy_path(list(numel), (2, 3, 4, 8), lambda k, b: numel[k] * b, distortion)
    assert path[0] == {k: 8 for k in numel} and path[-1] == {k: 2 for k in numel}
    assert len(path) == 1 + 3 * len(numel)  # one narrowing per step, every layer down to 2 bits
    rates = [sum(numel[k] * p[k] for k in p) for p in path]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert len(calls) == len(set(calls))  # each (layer, width) measured once
    first_sensitive = next(i for i, p in enumerate(path) if p["big_sensitive"] < 8)
    # the robust layer of equal size reaches the narrowest width before the sensitive one moves at all
    assert path[first_sensitive - 1]["big_robust"] == 2


def test_greedy_path_stops_a_layer_that_saves_nothing() -> None:
    path = greedy_path(["a", "b"], (4, 8), lambda k, b: 100.0 if k == "a" else float(b), lambda k, b: 1.0)
    assert path[-1] == {"a": 8, "b": 4}


@pytest.mark.parametrize("cut", [0, 1, 7, 19, 20])
def test_longest_accepted_bisects_to_the_last_passing_step(cut: int) -> None:
    path = [{"x": i} for i in range(21)]
    idx, tries = longest_accepted(path, lambda i: path[i]["x"] <= cut)
    assert idx == cut and len(tries) <= 5  # ceil(log2(21))
    assert all(t["accepted"] == (t["step"] <= cut) for t in tries)


def labelled_eval(fp32: Path, n: int, seed: int) -> tuple[np.ndarray, Callable[[Path], float]]:
    """``n`` images labelled by the fp32 model (int8 agrees on most, low bits on fewer) and an accuracy on them."""
    val = images(n, seed=seed)
    labels = run(fp32, val).argmax(1)
    return val, lambda p: float((run(p, val).argmax(1) == labels).mean())


@pytest.fixture(scope="module")
def int8_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("fit")
    fp32 = export(tiny_net(0), d / "fp32.onnx")
    quantize_static(fp32, d / "int8.onnx", images(8), QuantizeConfig(calib_size=8, weight_bits="8"))
    return fp32, d / "int8.onnx"


def test_fit_to_floor_on_a_real_int8_model(int8_pair: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, int8 = int8_pair
    val, eval_fn = labelled_eval(fp32, 64, seed=4)
    probe = val[:16]

    base = eval_fn(int8)
    floor = base - 0.1
    out = tmp_path / "fit.onnx"
    info = apply_weight_bits_to_qdq(int8, out, "auto", eval_fn=eval_fn, predict_fn=lambda p: run(p, probe),
                                    floor=floor)
    fit = info["fit"]
    assert info["sensitivity_source"] == "output_error" and info["budget"] is None
    assert info["accuracy"] >= floor and info["accuracy"] == pytest.approx(eval_fn(out))
    assert info["avg_bits"] < 8 and fit["step"] > 0 and fit["probes"] <= 3 * 6
    assert fit["estimated_coded_bytes"] < fit["estimated_8bit_bytes"]
    # every accepted try held the floor, every refused one missed it, and the shipped step is the last accepted
    assert all((t["accuracy"] >= floor) == t["accepted"] for t in fit["tries"])
    assert fit["step"] == max([0] + [t["step"] for t in fit["tries"] if t["accepted"]])
    compute = [n.name for n in onnx.load(str(out)).graph.node if n.op_type in ("Conv", "Gemm")]
    for node, b in info["bits"].items():
        q = qdq_weight(out, compute.index(node))[0]
        assert np.all(q % grid_multiplier(b, info["qmax"]) == 0)
    a = pack_onnx(int8, tmp_path / "a.lrdc", coder="auto")["size_bytes"]
    b = pack_onnx(out, tmp_path / "b.lrdc", coder="auto")["size_bytes"]
    assert b < a
    assert not list(tmp_path.glob(".wbits.*"))


def test_fit_keeps_8_bits_when_no_floor_can_hold(int8_pair: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, int8 = int8_pair
    val, eval_fn = labelled_eval(fp32, 32, seed=5)

    out = tmp_path / "kept.onnx"
    info = apply_weight_bits_to_qdq(int8, out, "auto", eval_fn=eval_fn, predict_fn=lambda p: run(p, val), floor=1.01)
    assert info["avg_bits"] == 8 and "below the floor" in info["fit"]["kept_8bit"]
    info = apply_weight_bits_to_qdq(int8, out, "auto")  # no data: nothing to hold a floor with
    assert info["avg_bits"] == 8 and "no labelled validation data" in info["fit"]["kept_8bit"]
    assert np.array_equal(run(out, val), run(int8, val))


def test_fit_past_its_time_measures_one_width_per_layer(int8_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """fit_seconds=0: each layer is run at 2 and 5 bits and the other widths scale those errors by weight noise."""
    fp32, int8 = int8_pair
    val, eval_fn = labelled_eval(fp32, 64, seed=4)

    floor = eval_fn(int8) - 0.1
    out = tmp_path / "scaled.onnx"
    info = apply_weight_bits_to_qdq(int8, out, "auto", eval_fn=eval_fn, predict_fn=lambda p: run(p, val[:16]),
                                    floor=floor, fit_seconds=0.0)
    assert info["sensitivity_source"] == "output_error_at_2_5_bits_scaled_by_weight_noise"
    assert info["fit"]["probes"] == 2 * len(info["bits"]) == 6
    assert info["accuracy"] >= floor and info["avg_bits"] < 8


def test_fit_cut_by_a_larger_check_set(int8_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """With a check set the cut holds the 8-bit model's accuracy on it within check_drop; a looser drop narrows
    more."""
    fp32, int8 = int8_pair
    val, check_x = images(32, seed=4), images(96, seed=9)
    labels, check_y = run(fp32, val).argmax(1), run(fp32, check_x).argmax(1)

    def acc(p: Path, x: np.ndarray, y: np.ndarray) -> float:
        return float((run(p, x).argmax(1) == y).mean())

    base = acc(int8, check_x, check_y)
    infos = {}
    for drop in (0.0, 0.2):
        out = tmp_path / f"check{drop}.onnx"
        infos[drop] = apply_weight_bits_to_qdq(int8, out, "auto", eval_fn=lambda p: acc(p, val, labels),
                                               predict_fn=lambda p: run(p, val[:16]), floor=0.0,
                                               check_fn=lambda p: acc(p, check_x, check_y), check_drop=drop)
        fit = infos[drop]["fit"]
        assert fit["check_drop"] == drop and fit["check_base"] == base
        assert acc(out, check_x, check_y) == fit["check_accuracy"] >= base - drop
        assert all((t["check_accuracy"] >= base - drop) == t["accepted"] for t in fit["tries"])
    assert infos[0.2]["avg_bits"] <= infos[0.0]["avg_bits"] and infos[0.2]["fit"]["step"] >= infos[0.0]["fit"]["step"]
