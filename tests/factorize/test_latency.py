"""Layer latency measurement: real ORT sessions, the on-disk cache (keys, atomic writes, damaged files)."""
from __future__ import annotations

import json

import pytest
from torch import nn

from pipeline.errors import ConfigError
from pipeline.factorize import latency
from pipeline.factorize.latency import cache_key, cache_path, layer_latency, measure_variants


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path))
    return tmp_path


def test_cache_path_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "d"))
    assert cache_path() == tmp_path / "d" / "latency.json"
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "x.json"))
    assert cache_path() == tmp_path / "x.json"


def test_measure_dense_and_factorized_then_served_from_cache(cache_dir):
    layer = nn.Conv2d(16, 24, 3, padding=1)
    variants = [(None, None), ("tucker2", (8, 8)), ("channel_svd", (8,)), ("spatial_svd", (8,)), ("cp", (8,))]
    ms = measure_variants(layer, (8, 8), variants, repeats=10)
    assert len(ms) == 5 and all(m > 0 for m in ms)
    data = json.loads((cache_dir / "latency.json").read_text())
    assert len(data) == 5
    assert not [p for p in cache_dir.iterdir() if p.name != "latency.json"]  # no temp files left behind
    # Served from the cache: identical numbers, in any subset/order.
    assert measure_variants(layer, (8, 8), variants[::-1], repeats=10) == ms[::-1]
    assert layer_latency(layer, (8, 8), "tucker2", (8, 8)) == ms[1]


def test_cache_key_separates_geometry_input_format_ranks_and_target():
    conv = nn.Conv2d(16, 24, 3, padding=1)
    base = cache_key(conv, (8, 8), ("tucker2", (8, 8)), "cpu")
    others = [cache_key(conv, (9, 8), ("tucker2", (8, 8)), "cpu"),
              cache_key(conv, (8, 8), ("tucker2", (8, 16)), "cpu"),
              cache_key(conv, (8, 8), ("channel_svd", (8,)), "cpu"),
              cache_key(conv, (8, 8), (None, None), "cpu"),
              cache_key(nn.Conv2d(16, 24, 3, padding=1, stride=2), (8, 8), ("tucker2", (8, 8)), "cpu")]
    assert len({base, *others}) == 6
    assert latency._ort_version() in base


def test_linear_layer_latency(cache_dir):
    assert layer_latency(nn.Linear(64, 32), (1, 1), repeats=5) > 0
    assert layer_latency(nn.Linear(64, 32), (1, 1), "linear_svd", (8,), repeats=5) > 0


def test_damaged_cache_is_ignored_and_rewritten(cache_dir):
    (cache_dir / "latency.json").write_text("{not json")
    layer = nn.Conv2d(8, 8, 3, padding=1)
    ms = layer_latency(layer, (6, 6), repeats=5)
    assert list(json.loads((cache_dir / "latency.json").read_text()).values()) == [ms]


def test_unknown_target_is_a_config_error(cache_dir):
    with pytest.raises(ConfigError, match="mobile-arm.*factorize.budget.target=cpu"):
        layer_latency(nn.Conv2d(8, 8, 3), (6, 6), target="mobile-arm")


def test_cache_key_settings_come_from_the_target_registry():
    from benchmarks.targets import TARGETS

    cpu = TARGETS.get("cpu")
    key = json.loads(cache_key(nn.Conv2d(8, 8, 3), (6, 6), (None, None), "cpu"))
    assert key["settings"] == {"intra_threads": cpu.intra_threads, "inter_threads": cpu.inter_threads,
                               "graph_opt": cpu.graph_opt_level}


def test_unknown_target_lists_the_registered_ones(cache_dir):
    with pytest.raises(ConfigError, match="unknown target 'tpu'.*cpu"):
        layer_latency(nn.Conv2d(8, 8, 3), (6, 6), target="tpu")
