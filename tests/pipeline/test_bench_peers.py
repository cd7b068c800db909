"""``bench peers``: our shipped files beside ORT int8 / fp16 of the original and general-purpose compressors, every
graph measured in one run; the fp16 peer and the compressors are checked on their own."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from benchmarks.accuracy import onnx_predict
from exporters.onnx import export_onnx
from pipeline.suites import run_bench
from pipeline.suites.peer_variants import COMPRESSORS, compress_file, fp16_weights, missing_peers


def _conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3),
                               torch.nn.Flatten(), torch.nn.Linear(16 * 6 * 6, 5)).eval()


def test_fp16_weights_halve_the_weight_bytes_and_keep_the_outputs(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    export_onnx(_conv_net(), (3, 8, 8), src, opset=17, simplify=False)
    dst = fp16_weights(src, tmp_path / "m.fp16.onnx")
    m = onnx.load(str(dst))
    halves = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves and sum(n.op_type == "Cast" for n in m.graph.node) == len(halves)
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    a, b = onnx_predict(src, x), onnx_predict(dst, x)
    # fp16 rounding of the weights only (relative step 2^-11): outputs agree to ~1e-3 of their scale
    assert np.abs(a - b).max() <= 5e-3 * np.abs(a).max()


@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_each_compressor_round_trips_and_shrinks_a_redundant_file(tmp_path: Path, name: str) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(bytes(range(256)) * 400)
    r = compress_file(f, name)
    assert 0 < r["size_bytes"] < f.stat().st_size / 10 and r["decode_mb_s"] > 0


def test_peers_suite_quick_measures_every_peer_beside_ours(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    run_bench("peers", out_dir=out, quick=True, root=tmp_path / "artifacts")
    table = json.loads((out / "peers.json").read_text())
    rows = {r["variant"]: r for r in table["rows"]}
    assert {"original fp32", "ORT int8 of original", "fp16 weights of original"} <= set(rows)
    assert any(v.startswith("ours: container (weights.lrdc") for v in rows)
    assert sum("shipped" in v for v in rows) == 1 and all(r["ours"] for v, r in rows.items() if "shipped" in v)
    orig = rows["original fp32"]
    assert orig["smaller"] == 1 and orig["speedup"] == 1 and not orig["ours"]
    # int8 weights are ~4x fewer bytes than fp32 ones (the graph and scales cost some): clearly smaller than fp32
    assert rows["ORT int8 of original"]["size_bytes"] < 0.6 * orig["size_bytes"]
    assert rows["fp16 weights of original"]["accuracy"] == pytest.approx(orig["accuracy"], abs=0.02)
    for r in table["rows"]:
        assert r["size_bytes"] > 0 and 0 <= r["accuracy"] <= 1
        assert r["smaller"] == round(orig["size_bytes"] / r["size_bytes"], 2)
        # a compressor is lossless: its row carries the accuracy of the file it packs
        for c in COMPRESSORS:
            if r["variant"].startswith(c + " of "):
                packed = rows[r["variant"][len(c) + 4:]]
                assert r["accuracy"] == packed["accuracy"] and r["size_bytes"] < packed["size_bytes"]
                assert r["p50_ms"] is None and r["decode_mb_s"] > 0
    assert table["missing_peers"] == missing_peers()
    assert table["plots"] and all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in table["plots"])
