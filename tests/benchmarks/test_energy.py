"""MAC / parameter counts read from ONNX graphs equal hand-computed ones; the energy proxy is self-consistent."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from benchmarks.energy import energy_proxy, onnx_layer_stats, roofline_all
from benchmarks.targets import PROFILES, DeviceProfile
from exporters.onnx import export_onnx
from pipeline.errors import ConfigError, InputError


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),                 # conv: 8 x 16x16 out, 3*3*3 MACs each
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),      # strided: 16 x 8x8 out, 8*3*3 each
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),    # depthwise: 16 x 8x8 out, 1*3*3 each
        nn.Conv2d(16, 8, 1, groups=2),                 # grouped 1x1: 8 x 8x8 out, (16/2)*1*1 each
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),                      # gemm: 512 * 10
    ).eval()


@pytest.fixture(scope="module")
def stats(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("energy") / "net.onnx"
    export_onnx(_net(), (3, 16, 16), path)
    return onnx_layer_stats(path, (3, 16, 16))


def test_mac_counts_match_hand_computed(stats: dict) -> None:
    expected = [
        8 * 16 * 16 * (3 * 3 * 3),   # conv
        16 * 8 * 8 * (8 * 3 * 3),    # strided conv
        16 * 8 * 8 * (1 * 3 * 3),    # depthwise conv
        8 * 8 * 8 * (16 // 2),       # grouped 1x1 conv
        512 * 10,                    # gemm
    ]
    assert [l["op"] for l in stats["layers"]] == ["Conv", "Conv", "Conv", "Conv", "Gemm"]
    assert [l["macs"] for l in stats["layers"]] == expected
    assert stats["macs"] == sum(expected)
    assert stats["macs_int8"] == 0 and stats["macs_fp32"] == sum(expected)


def test_params_and_bytes_match_the_folded_model(stats: dict) -> None:
    net = _net()
    # BatchNorm is folded into the first conv: its 2*8 affine parameters disappear, the conv gains nothing
    # (it already had a bias).
    n_params = sum(p.numel() for p in net.parameters()) - 2 * 8
    assert stats["params"] == n_params
    assert stats["weight_bytes"] == 4 * n_params
    first = stats["layers"][0]
    assert first["act_in_bytes"] == 3 * 16 * 16 * 4 and first["act_out_bytes"] == 8 * 16 * 16 * 4
    assert first["out_shape"] == [1, 8, 16, 16] and first["precision"] == "fp32"


def _qdq_conv_model(path: Path) -> None:
    """x -> Q(uint8) -> DQ -> Conv(DQ(int8 weight), DQ(int32 bias)) -> Q -> DQ -> y: a QDQ layer as ORT writes it."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 127, size=(4, 2, 3, 3), dtype=np.int8)
    b = rng.integers(-100, 100, size=(4,), dtype=np.int32)
    inits = [
        numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.array([0.02] * 4, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
        numpy_helper.from_array(b, "b_q"), numpy_helper.from_array(np.array([0.001] * 4, np.float32), "b_s"),
        numpy_helper.from_array(np.zeros(4, np.int32), "b_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "x_s"), numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
        numpy_helper.from_array(np.array(0.1, np.float32), "y_s"), numpy_helper.from_array(np.array(128, np.uint8), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["wd"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_zp"], ["bd"], axis=0),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("QuantizeLinear", ["c", "y_s", "y_zp"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "y_s", "y_zp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def test_qdq_conv_counts_as_int8(tmp_path: Path) -> None:
    path = tmp_path / "qdq.onnx"
    _qdq_conv_model(path)
    st = onnx_layer_stats(path, (2, 8, 8))
    (layer,) = st["layers"]
    assert layer["precision"] == "int8"
    assert layer["macs"] == 4 * 4 * 4 * (2 * 3 * 3) == st["macs_int8"] and st["macs_fp32"] == 0
    assert layer["params"] == 4 * 2 * 3 * 3 + 4 == st["params"]  # scales / zero points are not parameters
    assert layer["weight_bytes"] == 4 * 2 * 3 * 3 * 1 + 4 * 4   # int8 weights, int32 bias
    assert layer["act_in_bytes"] == 2 * 8 * 8 * 1                # uint8 activations in ...
    assert layer["act_out_bytes"] == 4 * 4 * 4 * 1               # ... and out
    fp32 = energy_proxy(st, PROFILES.get("cortex-a78-core"), precision="fp32")
    int8 = energy_proxy(st, PROFILES.get("cortex-a78-core"), precision="int8")
    assert int8["breakdown_uj"]["compute"] < fp32["breakdown_uj"]["compute"]


@pytest.mark.parametrize("profile_name", PROFILES.names())
def test_energy_proxy_is_consistent(stats: dict, profile_name: str) -> None:
    prof = PROFILES.get(profile_name)
    e = energy_proxy(stats, prof, precision="fp32")
    assert e["energy_uj"] == pytest.approx(sum(e["breakdown_uj"].values()))
    assert e["energy_uj"] == pytest.approx(sum(l["energy_uj"] for l in e["layers"]))
    # compute energy = MACs x (fp32 mult + add) from the Horowitz table
    assert e["breakdown_uj"]["compute"] == pytest.approx(stats["macs"] * (3.7 + 0.9) / 1e6)
    roof = e["roofline"]
    # sum of per-layer max(compute, memory) lies between the max of the sums and their total
    assert max(roof["compute_ms"], roof["memory_ms"]) <= roof["latency_ms"] + 1e-12
    assert roof["latency_ms"] <= roof["compute_ms"] + roof["memory_ms"] + 1e-12
    assert e["profile"]["name"] == profile_name and e["profile"]["source"]
    assert "Horowitz" in e["table"]


def test_no_onchip_memory_sends_every_byte_to_dram(stats: dict) -> None:
    base = PROFILES.get("epyc-avx2-core")
    tiny = DeviceProfile(name="no-cache", peak_macs_fp32=base.peak_macs_fp32, peak_macs_int8=base.peak_macs_int8,
                         mem_bandwidth=base.mem_bandwidth, onchip_bytes=0, source="test")
    e = energy_proxy(stats, tiny, precision="fp32")
    assert e["dram_bytes"] == stats["weight_bytes"] + stats["activation_bytes"]
    assert e["sram_bytes"] == 0 and not e["weights_resident"]
    assert e["breakdown_uj"]["dram"] == pytest.approx(e["dram_bytes"] * 640 / 4 / 1e6)


def test_roofline_all_covers_every_profile(stats: dict) -> None:
    r = roofline_all(stats)
    assert set(r) == set(PROFILES.names())
    assert all(v["latency_ms"] > 0 and v["energy_uj"] > 0 for v in r.values())


def test_bad_inputs_raise(tmp_path: Path, stats: dict) -> None:
    with pytest.raises(InputError):
        onnx_layer_stats(tmp_path / "missing.onnx", (3, 16, 16))
    with pytest.raises(ConfigError):
        energy_proxy(stats, PROFILES.get("epyc-avx2-core"), precision="int4")
