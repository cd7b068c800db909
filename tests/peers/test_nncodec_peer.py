"""The NNCodec peer's core: float weights in, NNC bitstream, weights out within the quantizer's reach; an ONNX model
coded, decoded and rebuilt; its rows in the quick peers suite. Runs where ``nncodec`` imports (see the conftest)."""
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
from pipeline.suites.nncodec_peer import NONWEIGHT_QP, code_onnx, decode, encode, step_size
from pipeline.suites.peers import NNCODEC_QPS


def _params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"conv": (rng.standard_normal((32, 16, 3, 3)) * 0.05).astype(np.float32),
            "fc": (rng.laplace(size=(10, 200)) * 0.03).astype(np.float32),
            "bias": (rng.standard_normal(32) * 0.1).astype(np.float32)}


def test_step_size_follows_the_qp_grid() -> None:
    # qp_density 2: four steps per octave, so 4 qp units double the step
    assert step_size(-32) == 2.0 ** -8 and step_size(-28) == 2.0 ** -7 and step_size(-30) == 1.5 * 2.0 ** -8


@pytest.mark.parametrize("qp", [-38, -26, -20])
@pytest.mark.parametrize("use_dq", [False, True])
def test_round_trip_error_is_bounded_by_the_step(qp: int, use_dq: bool) -> None:
    p = _params()
    out = decode(encode(p, qp, use_dq=use_dq))
    assert set(out) == set(p)
    # uniform quantization rounds to the nearest grid point (half a step); dependent quantization picks, per state,
    # a level of one of two interleaved grids 2 steps apart, so it stays within 2 steps
    bound = 2.0 if use_dq else 0.5 + 1e-6
    for k in ("conv", "fc"):
        err = np.abs(out[k].reshape(p[k].shape) - p[k])
        assert err.max() <= bound * step_size(qp) and err.mean() > 0
    # 1-D tensors (biases) are coded at NNCodec's fine non-weight qp
    assert np.abs(out["bias"] - p["bias"]).max() <= 2.0 * step_size(NONWEIGHT_QP)


def test_a_coarser_qp_gives_a_smaller_bitstream() -> None:
    p = _params()
    sizes = [len(encode(p, qp)) for qp in (-38, -32, -26, -20)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] / 2
    assert sizes[0] < sum(a.nbytes for a in p.values())


def test_code_onnx_rebuilds_a_model_that_runs_close_to_the_original(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 6 * 6, 5)).eval()
    src = tmp_path / "m.onnx"
    export_onnx(net, (3, 8, 8), src, opset=17, simplify=False)
    x = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    ref = onnx_predict(src, x)
    errs = []
    for qp in (-38, -20):
        dst = tmp_path / f"m.{qp}.onnx"
        r = code_onnx(src, dst, qp)
        onnx.checker.check_model(onnx.load(str(dst)))
        assert r["size_bytes"] == r["bitstream_bytes"] + r["graph_bytes"] and r["graph_bytes"] > 0
        assert r["decode_mb_s"] > 0 and 0 < r["max_abs_error"] <= 2.0 * step_size(qp)
        errs.append(float(np.abs(onnx_predict(dst, x) - ref).max()))
    # the fine qp stays close to the original outputs; the coarse one drifts more
    assert errs[0] < 0.05 * np.abs(ref).max() and errs[0] < errs[1]


def test_peers_suite_quick_puts_nncodec_rows_beside_ours(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    run_bench("peers", out_dir=out, quick=True, root=tmp_path / "artifacts")
    table = json.loads((out / "peers.json").read_text())
    assert "NNCodec" not in table["missing_peers"]
    rows = {r["variant"]: r for r in table["rows"]}
    orig = rows["original fp32"]
    for label in ("original", "our decomposed fp32"):
        coded = [rows[f"NNCodec qp={qp} of {label}"] for qp in NNCODEC_QPS]
        sizes = [r["bitstream_bytes"] for r in coded]
        assert sizes == sorted(sizes, reverse=True)  # coarser steps, fewer bits
        for r in coded:
            assert not r["ours"] and r["p50_ms"] is None and r["decode_mb_s"] > 0 and 0 <= r["accuracy"] <= 1
            assert r["size_bytes"] == r["bitstream_bytes"] + r["graph_bytes"]
            assert r["smaller"] == round(orig["size_bytes"] / r["size_bytes"], 2)
    # near-lossless at the finest qp: the rebuilt original scores what the original does, within a test image or two
    assert rows[f"NNCodec qp={NNCODEC_QPS[0]} of original"]["accuracy"] == pytest.approx(orig["accuracy"], abs=0.05)
