"""Pooling tensors into shared streams: the plan, and what it does to real containers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from pipeline.entropy.container import pack_onnx, read_container, unpack_to_onnx
from pipeline.entropy.coders import CODERS, model_bytes
from pipeline.entropy.grouping import plan_streams, plane_histograms, stream_cost_bits, table_bytes


def grid4(n: int, seed: int, spread: float = 2.5) -> np.ndarray:
    """int8 weights on a 4-bit grid (-7..7), Laplacian: what quantize.weight_bits=4 stores."""
    r = np.random.default_rng(seed)
    return np.clip(np.round(r.laplace(0, spread, n)), -7, 7).astype(np.int8)


def weights_model(tensors: dict[str, np.ndarray], path: Path) -> Path:
    """Each tensor is the int8 input of a DequantizeLinear (so the packer counts it as a weight)."""
    inits, nodes, outs = [], [], []
    for name, q in tensors.items():
        inits += [numpy_helper.from_array(q, name), numpy_helper.from_array(np.float32(0.01), name + "_s")]
        nodes.append(helper.make_node("DequantizeLinear", [name, name + "_s"], [name + "_f"]))
        outs.append(helper.make_tensor_value_info(name + "_f", onnx.TensorProto.FLOAT, q.shape))
    g = helper.make_graph(nodes, "w", [], outs, initializer=inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_similar_small_tensors_share_one_stream() -> None:
    items = [(grid4(600, s).tobytes(), 1) for s in range(30)]
    plan = plan_streams(items)
    assert plan == [list(range(30))]  # same statistics: one table for all
    assert plan_streams(items) == plan  # deterministic


def test_different_statistics_and_item_sizes_stay_apart() -> None:
    low = [(np.random.default_rng(s).integers(0, 4, 20000).astype(np.uint8).tobytes(), 1) for s in range(3)]
    high = [(np.random.default_rng(s).integers(100, 104, 20000).astype(np.uint8).tobytes(), 1) for s in range(3)]
    wide = [(np.random.default_rng(9).integers(0, 4, 600).astype(np.int16).tobytes(), 2)]
    plan = plan_streams(low + high + wide)
    # Disjoint alphabets: pooling would cost 1 bit per symbol, far more than a table.
    assert plan == [[0, 1, 2], [3, 4, 5], [6]]


def test_cost_model_counts_entropy_and_tables() -> None:
    a = plane_histograms(bytes([1, 2] * 500), 1)
    # 1 bit per symbol + one 2-symbol table (precision 8: a 4-bit length and ~6 mantissa bits per frequency)
    assert np.isclose(stream_cost_bits(a[None])[0] - stream_cost_bits(np.zeros_like(a)[None])[0],
                      1000 + 8 * (12 + 2 + 2 * 10 / 8))
    b = plane_histograms(np.arange(300, dtype=np.uint16).tobytes(), 2)
    assert b.shape == (2, 256) and b[1, 0] == 256 and b[1, 1] == 44  # high byte plane of 0..299


@pytest.mark.parametrize("bits,n", [(4, 512), (4, 2304), (8, 144), (8, 2304), (8, 20000)])
def test_table_estimate_tracks_the_real_rans16_tables(bits: int, n: int) -> None:
    lvl = 2 ** (bits - 1) - 1
    r = np.random.default_rng(n)
    x = np.clip(np.round(r.laplace(0, lvl / 4, n)), -lvl, lvl).astype(np.int8).tobytes()
    c = CODERS.get("rans16")
    real = model_bytes(c, c.encode(x), x)
    est = float(table_bytes(len(set(x)), n)) - 8  # the estimate also counts the two final 4-byte states
    assert 0.8 * real < est < 1.2 * real


def test_pooling_brings_small_models_to_the_order0_bound(tmp_path: Path) -> None:
    # A resnet20-like set of 4-bit weights: 40 tensors of 256-2304 symbols, spreads varying by layer.
    tensors = {f"w{i}": grid4([256, 512, 1024, 2304][i % 4], i, spread=2.0 + 0.05 * (i % 7)) for i in range(40)}
    path = weights_model(tensors, tmp_path / "m.onnx")
    pooled = pack_onnx(path, tmp_path / "p.lrdc", zstd_level=3)
    alone = pack_onnx(path, tmp_path / "a.lrdc", zstd_level=3, pool=False)
    h0 = pooled["order0_bits_per_weight"]
    assert alone["order0_bits_per_weight"] == h0
    # One table per tensor costs several percent here; pooled, the coded weights are within 1 % of the sum of the
    # tensors' own order-0 entropies (the pooled table is paid once, the divergence between tensors is small).
    assert alone["total_bits_per_weight"] > 1.03 * h0
    assert pooled["total_bits_per_weight"] < 1.01 * h0
    assert pooled["size_bytes"] < alone["size_bytes"]
    assert len(pooled["streams"]) < len(alone["streams"]) and pooled["coders_used"] == ["rans16", "zstd"]
    # A tensor's bytes are its share of its stream: the shares add up to the stream's payload.
    for j, st in enumerate(pooled["streams"]):
        share = sum(t["bytes"] for t in pooled["tensors"] if t["stream"] == j)
        assert j == 0 or abs(share - st["bytes"]) < 0.01
    rebuilt = unpack_to_onnx(tmp_path / "p.lrdc", tmp_path / "u.onnx")
    back = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(rebuilt)).graph.initializer}
    _, arrays = read_container(tmp_path / "p.lrdc")
    for k, v in tensors.items():
        assert back[k].tobytes() == v.tobytes() and arrays[k].tobytes() == v.tobytes()
