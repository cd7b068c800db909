"""Benchmark targets and device profiles: registered names, sane numbers, stated sources, session settings."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.targets import TARGETS, DeviceProfile, Target, get_target, target_session
from exporters.onnx import export_onnx
from pipeline.errors import ConfigError, InputError


def test_required_targets_registered_with_profiles() -> None:
    for name in ("cpu", "mobile-arm", "mobile-nnapi", "mobile-coreml"):
        t = TARGETS.get(name)
        assert isinstance(t, Target) and t.name == name
        p = t.profile
        assert isinstance(p, DeviceProfile)
        assert p.peak_macs_fp32 > 0 and p.peak_macs_int8 > 0 and p.mem_bandwidth > 0 and p.onchip_bytes > 0
        assert p.source.strip()
        assert t.providers and t.intra_threads >= 1 and t.inter_threads >= 1
        if name.startswith("mobile"):
            assert "proxy" in t.note.lower()
    assert TARGETS.get("cpu").intra_threads == 1


def test_target_validates_settings() -> None:
    cpu = TARGETS.get("cpu")
    with pytest.raises(ConfigError):
        replace(cpu, graph_opt_level="fastest")
    with pytest.raises(ConfigError):
        replace(cpu, model_format="tflite")
    with pytest.raises(ConfigError):
        TARGETS.get("no-such-target")


def test_target_session_applies_the_target_settings(tmp_path: Path) -> None:
    torch.manual_seed(0)
    export_onnx(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), (1, 5, 5), tmp_path / "m.onnx")
    sess = target_session(tmp_path / "m.onnx", TARGETS.get("cpu"), threads=1)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert sess.get_session_options().intra_op_num_threads == 1
    basic = target_session(tmp_path / "m.onnx", TARGETS.get("mobile-nnapi"))
    assert str(basic.get_session_options().graph_optimization_level).endswith("ENABLE_BASIC")
    with pytest.raises(InputError):
        target_session(tmp_path / "missing.onnx", TARGETS.get("cpu"))
    gpu_only = replace(TARGETS.get("cpu"), name="gpu", providers=("NoSuchExecutionProvider",))
    with pytest.raises(ConfigError, match="target gpu.*NoSuchExecutionProvider"):
        target_session(tmp_path / "m.onnx", gpu_only)


def test_get_target_names_the_known_targets() -> None:
    assert get_target("cpu") is TARGETS.get("cpu")
    with pytest.raises(ConfigError, match="unknown target 'tpu'.*board-a53.*cpu.*mobile-arm"):
        get_target("tpu")


def test_only_the_local_cpu_target_is_measured_here() -> None:
    # the factorizer's latency model refuses the others (their timings here are proxies)
    assert [n for n in TARGETS.names() if TARGETS.get(n).measured_here] == ["cpu"]


def test_cpu_target_profile_follows_the_host_isa() -> None:
    from pathlib import Path

    from benchmarks.targets import PROFILES, TARGETS, host_profile

    flags = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    want = "x86-avx512-core" if " avx512f" in flags else "epyc-avx2-core"
    assert host_profile().name == want
    assert TARGETS.get("cpu").profile == PROFILES.get(want)
    # the AVX-512 profile's peaks are the wider datapath's: twice the fp32 rate, VNNI's int8 rate
    wide, narrow = PROFILES.get("x86-avx512-core"), PROFILES.get("epyc-avx2-core")
    assert wide.peak_macs("fp32") > narrow.peak_macs("fp32")
    assert wide.peak_macs("int8") == 4 * wide.peak_macs("fp32")
