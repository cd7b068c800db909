"""``benchmarks/nncodec_rows.py`` on a real (quick) pipeline run: our container, zstd -19 of our int8 graph and
NNCodec of the original and of our decomposed model, with sizes that match the run's files. Runs where ``nncodec``
imports (see the conftest)."""
from __future__ import annotations

import json
from pathlib import Path

import zstandard

from benchmarks.nncodec_rows import MATCH, main
from pipeline.suites._common import QUICK_MODEL, QUICK_OVERRIDES, quick_data
from pipeline.suites.peers import NNCODEC_QPS


def test_rows_of_a_quick_run(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    data = quick_data(root)
    out = tmp_path / "bench"
    args = ["--model", QUICK_MODEL, "--data", data, "--artifacts", str(root), "--out", str(out)]
    # the quick run (one epoch of a tiny net) is lossy: open the fidelity gate as the quick suites do
    for o in [*QUICK_OVERRIDES, "export.mobile=false", "benchmark.max_drop=1.0"]:
        args += ["--set", o]
    assert main(args) == 0
    [js] = out.glob("nncodec-*.json")
    table = json.loads(js.read_text())
    assert js.with_suffix(".md").read_text().startswith("### NNCodec")
    rows = {r["variant"].removesuffix(" (shipped)"): r for r in table["rows"]}
    mdir = next(p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file())
    rep = json.loads(next(mdir.glob("06-benchmark-*/report.json")).read_text())
    by = {v["name"]: v for v in rep["variants"]}
    # our rows are the run's files and the report's accuracies
    container = rows["ours: container weights.lrdc"]
    assert container["size_bytes"] == (mdir / by["unpacked"]["file"]).stat().st_size
    assert container["accuracy"] == by["unpacked"]["accuracy"] and container["decode_mb_s"] > 0
    int8 = (mdir / by["int8"]["file"]).read_bytes()
    z = rows["zstd -19 of our int8 graph"]
    assert z["size_bytes"] == len(zstandard.ZstdCompressor(level=19).compress(int8))
    assert zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor(level=19).compress(int8)) == int8
    assert rows["original fp32"]["smaller"] == 1.0
    for label in ("original", "our decomposed fp32"):
        coded = [rows[f"NNCodec qp={qp} of {label}"] for qp in NNCODEC_QPS]
        assert [r["bitstream_bytes"] for r in coded] == sorted((r["bitstream_bytes"] for r in coded), reverse=True)
        for r in coded:
            assert r["size_bytes"] == r["bitstream_bytes"] + r["graph_bytes"] and 0 <= r["accuracy"] <= 1
    # the decomposed model has fewer weights than the original, so it codes smaller at the same qp
    assert rows[f"NNCodec qp={NNCODEC_QPS[0]} of our decomposed fp32"]["bitstream_bytes"] < \
        rows[f"NNCodec qp={NNCODEC_QPS[0]} of original"]["bitstream_bytes"]
    # the verdict is the smallest row within MATCH of the original's accuracy
    floor = by["original"]["accuracy"] - MATCH
    ok = [r for r in table["rows"] if r["variant"] != "original fp32" and r["accuracy"] >= floor - 1e-12]
    assert table["best_matched"] == (min(ok, key=lambda r: r["size_bytes"])["variant"] if ok else None)
