"""Interleaved latency measurement and ORT per-node profiles on tiny exported CNNs (no timing asserts)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.latency import measure_latency, profile_nodes
from benchmarks.targets import TARGETS
from exporters.onnx import export_onnx
from pipeline.errors import ConfigError

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lat")
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
    narrow = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    out = {}
    for name, m in (("wide", wide), ("narrow", narrow)):
        export_onnx(m, SHAPE, d / f"{name}.onnx")
        out[name] = d / f"{name}.onnx"
    return out


def _check(res: dict, names: list[str], samples: int) -> None:
    assert list(res) == names
    for r in res.values():
        assert r["samples"] == samples
        assert 0 < r["min"] <= r["p50"] <= r["p90"] <= r["p99"]
        assert r["mean"] > 0 and r["cpu_p50"] >= 0


def test_measure_latency_exact_samples_and_ordered_percentiles(models: dict[str, Path]) -> None:
    # samples not a multiple of chunk: the last visit of each variant must stop exactly at `samples`.
    res = measure_latency(models, TARGETS.get("cpu"), SHAPE, batch=1, samples=13, warmup=2, threads=1, seed=3, chunk=5)
    _check(res, ["wide", "narrow"], 13)
    assert res["wide"]["settings"]["intra_threads"] == 1


def test_measure_latency_batch_and_ort_target(models: dict[str, Path]) -> None:
    # mobile-arm times .ort files (converted on the fly) with the CPU EP as a proxy.
    res = measure_latency({"narrow": models["narrow"]}, TARGETS.get("mobile-arm"), SHAPE, batch=3, samples=4, warmup=1)
    _check(res, ["narrow"], 4)


def test_measure_latency_rejects_bad_counts(models: dict[str, Path]) -> None:
    with pytest.raises(ConfigError):
        measure_latency(models, TARGETS.get("cpu"), SHAPE, samples=0)


def test_profile_nodes_sorted_per_node(models: dict[str, Path]) -> None:
    rows = profile_nodes(models["wide"], TARGETS.get("cpu"), SHAPE, runs=5)
    assert rows, "no kernel events in the profile"
    totals = [r["total_us"] for r in rows]
    assert totals == sorted(totals, reverse=True)
    assert len({r["node"] for r in rows}) == len(rows)
    assert any(r["op"] in ("Conv", "FusedConv") for r in rows)
    for r in rows:
        assert r["mean_us"] == pytest.approx(r["total_us"] / 5)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)


def test_time_interleaved_takes_exactly_the_samples_after_warmup() -> None:
    import numpy as np

    from benchmarks.latency import time_interleaved

    calls: list[str] = []
    runs = {n: (lambda n=n: calls.append(n)) for n in ("a", "b", "c")}
    wall, cpu = time_interleaved(runs, samples=7, warmup=2, chunk=3, rng=np.random.default_rng(0))
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up first, in order
    assert all(len(wall[n]) == len(cpu[n]) == 7 for n in runs)
    assert len(calls) == 6 + 21
    # interleaved by rounds: each round visits every pending variant once, one chunk each (3 + 3 + 1 = 7 samples)
    timed = calls[6:]
    for start, size in ((0, 9), (9, 9), (18, 3)):
        rnd = timed[start:start + size]
        assert sorted(rnd) == sorted(["a", "b", "c"] * (size // 3)), rnd
