"""U8S8 saturation on x86 without VNNI, and the reduce_range setting that avoids it (asserted per detected ISA)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.targets import get_target
from pipeline.config import QuantizeConfig, from_dict
from pipeline.errors import ConfigError
from pipeline.quantize.isa import host_isa, resolve_reduce_range
from pipeline.quantize.ort_static import output_sqnr, quantize_static
from tests.quantize.tiny_models import export, images, tiny_net
from tests.helpers.onnx_models import qdq_weight


def _fused_vs_unfused(p: Path, x: np.ndarray) -> float:
    """SQNR of ORT's fused int8 kernels (QLinearConv, ...) against the unfused QDQ reference (DQ -> float op)."""
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.graph_optimization_level = level
        outs.append(ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0])
    return output_sqnr(outs[1], outs[0])


def test_isa_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    avx2 = tmp_path / "avx2"
    avx2.write_text("flags\t\t: fpu sse4_1 avx avx2 fma\n")
    vnni = tmp_path / "vnni"
    vnni.write_text("flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n")
    a, v = host_isa(avx2), host_isa(vnni)
    assert a["avx2"] and not a["vnni"] and v["vnni"]
    assert a["u8s8_saturates"] == a["x86"] and v["u8s8_saturates"] is False
    assert resolve_reduce_range("auto", "int8", a) == a["x86"]
    assert resolve_reduce_range("auto", "int8", v) is False
    assert resolve_reduce_range("auto", "uint8", a) is False  # U8U8 kernels do not saturate
    assert resolve_reduce_range("auto", "int8", a, get_target("mobile-arm")) is False  # ARM: no saturation
    assert resolve_reduce_range("auto", "int8", a, get_target("cpu")) == a["x86"]
    assert resolve_reduce_range("true", "int8", v) is True and resolve_reduce_range("false", "int8", a) is False


def test_reduce_range_config_is_validated() -> None:
    assert from_dict(QuantizeConfig, {"reduce_range": "true"}).reduce_range == "true"
    with pytest.raises(ConfigError, match="reduce_range"):
        from_dict(QuantizeConfig, {"reduce_range": "yes"}, prefix="quantize.")


def test_full_range_u8s8_saturates_only_without_vnni(tmp_path: Path) -> None:
    fp32 = export(tiny_net(0), tmp_path / "fp32.onnx")
    cal, x = images(16, seed=1), images(32, seed=9)
    sq, info = {}, {}
    for rr in ("false", "true", "auto"):
        out = tmp_path / f"rr_{rr}.onnx"
        info[rr] = quantize_static(fp32, out, cal, replace(QuantizeConfig(calib_size=16), reduce_range=rr))
        sq[rr] = _fused_vs_unfused(out, x)
        w = qdq_weight(out, 1)[0]
        assert np.abs(w.astype(np.int32)).max() == (64 if info[rr]["reduce_range"]["applied"] else 127)
    isa = host_isa()
    assert info["auto"]["reduce_range"] == {"setting": "auto", "applied": bool(isa["u8s8_saturates"]),
                                            "weight_qmax": 64 if isa["u8s8_saturates"] else 127, "host_isa": isa}
    # 7-bit weights never saturate int16 pair sums (255 * 64 * 2 < 32767): fused ~ QDQ semantics on every host
    # (what is left, ~30 dB here, is the fused kernels' own requantization rounding of intermediate outputs).
    assert sq["true"] > 25.0
    assert sq["auto"] > 25.0  # the setting the pipeline uses is correct here, whatever this host's ISA
    if isa["u8s8_saturates"]:
        # x86 without VNNI: vpmaddubsw saturates, full-range U8S8 drifts far from the QDQ reference.
        assert sq["false"] < sq["true"] - 10.0
    else:
        # VNNI (vpdpbusd, int32 accumulation) or ARM: full range is exact as well.
        assert sq["false"] > 25.0
