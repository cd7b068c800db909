"""Low-bit storage weights: grids, k-means sharing, exact graph carriage, bit allocation under a budget."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from pipeline.config import QuantizeConfig
from pipeline.entropy.container import pack_onnx
from pipeline.errors import ConfigError
from pipeline.quantize.ort_static import output_sqnr, quantize_static
from pipeline.quantize.weights import (apply_weight_bits_fp32, apply_weight_bits_to_qdq, choose_bits,
                                       grid_multiplier, quantize_kmeans, quantize_uniform)
from tests.quantize.tiny_models import export, images, run, tiny_net
from tests.helpers.onnx_models import qdq_weight

rng = np.random.default_rng(0)
W = rng.laplace(0, 0.05, (16, 8, 3, 3)).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_uniform_grid(bits: int, symmetric: bool) -> None:
    q = quantize_uniform(W, bits, symmetric=symmetric)
    assert q.codes.shape == W.shape and q.codes.max() < 2 ** bits
    assert np.array_equal(q.scale.astype(np.float16).astype(np.float32), q.scale)  # fp16 scales
    for c in range(W.shape[0]):  # at most 2**b values per channel, all on the channel's grid
        vals = np.unique(q.dequant[c])
        assert len(vals) <= 2 ** bits
        np.testing.assert_allclose(vals / q.scale[c], np.round(vals / q.scale[c]), atol=1e-4)
    err = np.abs(q.dequant - W).max(axis=(1, 2, 3))
    assert (err <= q.scale * 0.5 * 1.01 + 1e-7).all()  # round to nearest, no clipping beyond half a step


def test_kmeans_sharing_beats_uniform_on_laplace() -> None:
    for bits in (2, 3, 4):
        k = quantize_kmeans(W, bits)
        u = quantize_uniform(W.reshape(1, -1), bits, symmetric=False).dequant.reshape(W.shape)
        k0 = quantize_kmeans(W, bits, iters=0)  # Deep Compression's linear initialisation alone
        assert len(np.unique(k.dequant)) <= 2 ** bits
        assert np.array_equal(k.centroids[k.codes], k.dequant)
        # One shared codebook per layer: Lloyd beats its init and a per-layer uniform grid on peaked weights.
        mse = np.mean((k.dequant - W) ** 2)
        assert mse < np.mean((k0.dequant - W) ** 2) and mse < np.mean((u - W) ** 2)
    with pytest.raises(ConfigError):
        quantize_kmeans(W, 9)


def test_choose_bits_respects_budget_and_sensitivity() -> None:
    numel = {"a": 1000, "b": 1000, "c": 10}
    sens = {"a": 10.0, "b": 0.01, "c": 0.01}
    calls: list[tuple[str, int]] = []

    def drop(layer: str, b: int) -> float:
        calls.append((layer, b))
        return sens[layer] * (8 - b) ** 2

    bits = choose_bits(numel, drop, budget_bits=5.0)
    avg = sum(bits[k] * numel[k] for k in bits) / sum(numel.values())
    assert avg <= 5.0 and bits["a"] > bits["b"]  # the sensitive layer keeps more bits
    assert len(calls) == len(set(calls))  # each (layer, bits) measured once
    with pytest.raises(ConfigError, match="budget"):
        choose_bits(numel, drop, budget_bits=1.5)


def test_fp32_graph_carries_low_bit_weights(tmp_path: Path) -> None:
    fp32 = export(tiny_net(0), tmp_path / "fp32.onnx")
    info = apply_weight_bits_fp32(fp32, tmp_path / "w4.onnx", 4, method="kmeans")
    assert set(info["layers"]) == {"0.weight", "2.weight", "5.weight"} and info["avg_bits"] == 4
    m = onnx.load(str(tmp_path / "w4.onnx"))
    for t in m.graph.initializer:
        if t.name in info["layers"]:
            assert len(np.unique(numpy_helper.to_array(t))) <= 16
    x = images(16, seed=3)
    assert output_sqnr(run(fp32, x), run(tmp_path / "w4.onnx", x)) > 10.0


@pytest.fixture(scope="module")
def int8_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("w")
    fp32 = export(tiny_net(0), d / "fp32.onnx")
    quantize_static(fp32, d / "int8.onnx", images(8), QuantizeConfig(calib_size=8))
    return fp32, d / "int8.onnx"


def _session(p: Path, opt: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if opt
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits", [4, 6])
def test_qdq_snap_is_exact_and_codes_to_about_b_bits(int8_pair: tuple[Path, Path], tmp_path: Path, bits: int) -> None:
    fp32, int8 = int8_pair
    out = tmp_path / "lowbit.onnx"
    info = apply_weight_bits_to_qdq(int8, out, str(bits))
    assert info["avg_bits"] == bits and len(info["bits"]) == 3
    lvl = 2 ** (bits - 1) - 1
    for k in range(3):
        q = qdq_weight(out, k)[0]
        # The grid lies inside the range ORT quantized to (+-64 under reduce_range, else +-127).
        assert len(np.unique(q)) <= 2 * lvl + 1 and np.all(q % grid_multiplier(bits, info["qmax"]) == 0)
        assert np.abs(q.astype(np.int32)).max() <= info["qmax"]
    x = images(16, seed=11)
    # Fused (QLinearConv) and unfused (plain DQ -> Conv) execution agree: bias scales were kept consistent.
    a = _session(out, True).run(None, {"input": x})[0]
    b = _session(out, False).run(None, {"input": x})[0]
    assert output_sqnr(b, a) > 30.0
    assert output_sqnr(run(fp32, x), a) > (6.0 if bits == 4 else 12.0)
    stats = pack_onnx(out, tmp_path / "w.lrdc", coder="auto")
    assert stats["order0_bits_per_weight"] <= bits + 0.01
    assert stats["total_bits_per_weight"] < bits + 1.5  # tiny tensors: code tables and per-tensor framing are a visible overhead


def test_qdq_auto_bits_with_eval_under_budget(int8_pair: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, int8 = int8_pair
    val = images(32, seed=4)
    labels = run(fp32, val).argmax(1)

    def eval_fn(p: Path) -> float:
        return float((run(p, val).argmax(1) == labels).mean())

    info = apply_weight_bits_to_qdq(int8, tmp_path / "auto.onnx", "auto", eval_fn=eval_fn, size_budget=5.0,
                                    choices=(3, 5, 8))
    assert info["sensitivity_source"] == "eval" and info["avg_bits"] <= 5.0
    assert set(info["bits"].values()) <= {3, 5, 8} and 0.0 <= info["accuracy"] <= 1.0
    assert not list(tmp_path.glob(".wbits.*"))
    proxy = apply_weight_bits_to_qdq(int8, tmp_path / "proxy.onnx", "auto", size_budget=4.0)
    assert proxy["sensitivity_source"] == "weight_mse" and proxy["avg_bits"] <= 4.0


def test_quantize_static_applies_weight_bits(int8_pair: tuple[Path, Path], tmp_path: Path) -> None:
    fp32, _ = int8_pair
    cfg = replace(QuantizeConfig(calib_size=8), weight_bits="3")
    info = quantize_static(fp32, tmp_path / "q.onnx", images(8), cfg)
    assert info["weight_bits"]["avg_bits"] == 3
    assert len(np.unique(qdq_weight(tmp_path / "q.onnx", 1)[0])) <= 7


def _bias_scales(path: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(input scale, weight scale, bias scale) of every Conv/Gemm with an int32 bias in a QDQ model."""
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    out = []
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] in prod:
            x, w, b = (prod[i] for i in n.input[:3])
            out.append((inits[x.input[1]], inits[w.input[1]], inits[b.input[1]]))
    return out


@pytest.mark.parametrize("grid", ["layer", "octave", "channel"])
def test_weight_grids_steps_and_bias_scales(int8_pair: tuple[Path, Path], tmp_path: Path, grid: str) -> None:
    fp32, int8 = int8_pair
    out = tmp_path / f"{grid}.onnx"
    info = apply_weight_bits_to_qdq(int8, out, "4", grid=grid)
    assert info["grid"] == grid
    m = grid_multiplier(4, info["qmax"])
    for k in range(3):
        q, s = qdq_weight(out, k)
        j = q.astype(np.int32) // m
        assert np.all(q % m == 0) and np.abs(j).max() <= 7
        per_ch = np.abs(j.reshape(len(s), -1)).max(1)
        ratio = s / s.max()
        if grid == "layer":
            assert np.all(s == s[0])  # one step for the whole tensor
        elif grid == "octave":  # the layer's step over a power of two; each channel fills the upper half of the grid
            assert np.allclose(np.log2(ratio), np.round(np.log2(ratio))) and np.all(per_ch >= 3)
        else:
            assert np.all(per_ch == 7)  # every channel's largest weight on the outermost level
    for x_s, w_s, b_s in _bias_scales(out):  # what the fused QLinearConv assumes, exactly
        assert np.array_equal(b_s, (np.float32(x_s) * w_s).astype(np.float32))
    x = images(16, seed=11)
    a, b = _session(out, True).run(None, {"input": x})[0], _session(out, False).run(None, {"input": x})[0]
    assert output_sqnr(b, a) > 30.0 and output_sqnr(run(fp32, x), a) > 6.0


def test_layer_grid_scales_cost_almost_nothing_in_the_container(int8_pair: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    _, int8 = int8_pair
    side = {}
    for grid in ("layer", "channel"):
        apply_weight_bits_to_qdq(int8, tmp_path / f"{grid}.onnx", "4", grid=grid)
        st = pack_onnx(tmp_path / f"{grid}.onnx", tmp_path / f"{grid}.lrdc")
        side[grid] = sum(t["bytes"] for t in st["tensors"] if not t["is_weight"] and t["dtype"] == "float32")
    assert side["layer"] < 0.5 * side["channel"]
    with pytest.raises(ConfigError, match="weight_grid"):
        apply_weight_bits_to_qdq(int8, tmp_path / "bad.onnx", "4", grid="row")


def test_resolve_grid() -> None:
    from pipeline.quantize.grids import resolve_grid

    assert resolve_grid("auto") == "layer" and resolve_grid("auto", qat_epochs=2) == "channel"
    assert resolve_grid("octave", 0) == "octave"
    with pytest.raises(ConfigError, match="weight_grid"):
        resolve_grid("rows")
