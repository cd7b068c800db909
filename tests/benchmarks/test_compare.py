"""time_variants: one interleaved run, speedups against the baseline, MAC reduction and efficiency (structure only)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.compare import time_variants
from benchmarks.targets import PROFILES
from exporters.onnx import export_onnx
from pipeline.errors import ConfigError


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("compare")
    dense = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
    # the second 3x3 conv as channel SVD at rank 8: 3x3 (32->8) then 1x1 (8->32)
    low = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                        nn.Sequential(nn.Conv2d(32, 8, 3, padding=1), nn.Conv2d(8, 32, 1)), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
    out = {"dense": d / "dense.onnx", "lowrank": d / "lowrank.onnx"}
    export_onnx(dense, (3, 12, 12), out["dense"])
    export_onnx(low, (3, 12, 12), out["lowrank"])
    return out


def test_time_variants_structure(models: dict[str, Path]) -> None:
    res = time_variants(models, (3, 12, 12), samples=12, warmup=2)
    assert res["baseline"] == "dense" and res["settings"]["samples"] == 12
    rows = {r["variant"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "lowrank"}
    for r in rows.values():
        assert r["samples"] == 12
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert set(r["roofline_ms"]) == set(PROFILES.names())
    assert rows["dense"]["speedup"] == 1.0 and rows["dense"]["efficiency"] is None
    hw = 12 * 12
    dense_macs = hw * 32 * 27 + hw * 32 * 32 * 9 + 32 * 4
    low_macs = hw * 32 * 27 + hw * 8 * 32 * 9 + hw * 32 * 8 + 32 * 4
    assert rows["dense"]["macs"] == dense_macs and rows["lowrank"]["macs"] == low_macs
    assert rows["lowrank"]["mac_reduction"] == pytest.approx(dense_macs / low_macs)
    assert rows["lowrank"]["efficiency"] == pytest.approx(rows["lowrank"]["speedup"] / rows["lowrank"]["mac_reduction"])
    assert rows["lowrank"]["smaller"] > 1.0


def test_time_variants_rejects_unknown_baseline(models: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="baseline"):
        time_variants(models, (3, 12, 12), baseline="nope", samples=2, warmup=0)
    with pytest.raises(ConfigError):
        time_variants({}, (3, 12, 12))
