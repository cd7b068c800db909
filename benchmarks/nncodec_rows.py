"""NNCodec (MPEG NNC / DeepCABAC) lossy weight coding beside our shipped container, on one pipeline run.

The storage half of ``lowrank-deploy bench peers`` without its expensive peers (NNCF, tensorly-torch, Torch-Pruning)
and without the latency loop: the run's (cached) stages give the original fp32 ONNX, our decomposed fp32 model,
our int8 graph and the container; beside them ``zstd -19`` of our int8 graph and NNCodec at the peers suite's qps
(:data:`pipeline.suites.peers.NNCODEC_QPS`) of the original and of our decomposed model, each rebuilt from the
decoded weights and scored on the run's test split. The rows are the suite's own (:func:`pipeline.suites.peers._row`,
:func:`pipeline.suites.peers._nncodec_rows`); accuracies of our files are the run's report's.

Needs ``nncodec`` (``make peers-venv``)::

    python -m benchmarks.nncodec_rows --model vgg11 --data digits --artifacts artifacts [--set KEY=VALUE ...]

runs the default pipeline (cached stages reused, as ``make deploy``; ``--set`` as in ``lowrank-deploy run``) and
writes ``<out>/nncodec-<model>-<data>.{json,md}`` (``--out`` defaults to ``<artifacts>/bench``).
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.storage import artifact_bytes
from pipeline.config import build_config
from pipeline.runner import run
from pipeline.stage_api import config_dataset
from pipeline.suites._common import Table, md_table
from pipeline.suites.peer_variants import compress_file
from pipeline.suites.peers import NNCODEC_QPS, QP_DENSITY, _nncodec_rows, _row

#: "matched accuracy": within this many points (as a fraction) of the original's test accuracy
MATCH = 0.01


def nncodec_table(model: str, data: str, root: Path, overrides: Sequence[str] = ()) -> Table:
    """The rows for ``model`` on ``data``: the run's original, our files, zstd -19 of our int8 graph, NNCodec."""
    cfg = build_config(None, list(overrides), model=model, data=data, artifacts=str(root))
    res = run(cfg, progress=False)
    rep = json.loads(res.artifact("benchmark").path("report.json").read_text())
    by = {v["name"]: v for v in rep["variants"]}
    mdir = res.artifact("export").dir.parent
    ds = config_dataset(cfg)  # the test split the run's report measured
    x = ds.test.x.numpy().astype(np.float32)
    y = ds.test.y.numpy()
    original = mdir / by["original"]["file"]
    base = {"size_bytes": artifact_bytes(original), "p50_ms": by["original"]["latency_ms"]["p50"]}
    shipped = rep["headline"]["shipped"]
    rows: list[dict[str, Any]] = []
    for name, label in (("original", "original fp32"), ("finetuned", "ours: fp32 decomposed"),
                        ("int8", "ours: int8 graph")):
        v = by[name]
        rows.append(_row(model, data, label + (" (shipped)" if shipped == name else ""), name != "original",
                         artifact_bytes(mdir / v["file"]), v["accuracy"], None, base))
    unpacked = by["unpacked"]
    rows.append(_row(model, data, "ours: container weights.lrdc" + (" (shipped)" if shipped == "unpacked" else ""),
                     True, unpacked["size_bytes"], unpacked["accuracy"], None, base,
                     res.artifact("entropy-code").metrics.get("decode_mb_s")))
    z = compress_file(mdir / by["int8"]["file"], "zstd -19")
    rows.append(_row(model, data, "zstd -19 of our int8 graph", False, z["size_bytes"], by["int8"]["accuracy"],
                     None, base, z["decode_mb_s"]))
    sources = {"original": original, "our decomposed fp32": mdir / by["finetuned"]["file"]}
    with tempfile.TemporaryDirectory(prefix="lrd-nnc-") as td:
        rows += _nncodec_rows(model, data, sources, x, y, base, Path(td))
    floor = by["original"]["accuracy"] - MATCH
    matched = [r for r in rows if r["variant"] != "original fp32" and r["accuracy"] >= floor - 1e-12]
    best = min(matched, key=lambda r: r["size_bytes"]) if matched else None
    return {
        "title": f"NNCodec lossy weight coding beside our container: {model} on {data}",
        "settings": f"default pipeline config{' + ' + ', '.join(overrides) if overrides else ''}; test split of the "
                    f"run ({len(y)} images); NNCodec nnc_core at qps {'/'.join(map(str, NNCODEC_QPS))}, its other "
                    f"defaults (qp_density {QP_DENSITY}, dependent quantization, 1-D tensors at qp -75)",
        "columns": ["model", "data", "variant", "ours", "size_bytes", "bitstream_bytes", "graph_bytes", "smaller",
                    "accuracy", "decode_mb_s"],
        "rows": rows,
        "best_matched": None if best is None else best["variant"],
        "notes": ["NNCodec size = NNC bitstream of every fp32 initializer + zstd -19 of the graph without them; "
                  "accuracy of the graph rebuilt from the decoded weights (fp32 compute); decode_mb_s: decoded "
                  "fp32 bytes per second (container: its weight streams; zstd: whole file), median of 3",
                  "accuracies of our files: the run's report (container: the model `unpack` rebuilds)",
                  f"smallest within {MATCH * 100:g} point of the original's {by['original']['accuracy']:.4f}: "
                  + ("none" if best is None else f"{best['variant']} ({best['size_bytes']:,} bytes, "
                                                 f"{best['accuracy']:.4f})")],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.nncodec_rows", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vgg11")
    p.add_argument("--data", default="digits")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=None, help="default: <artifacts>/bench")
    a = p.parse_args(argv)
    table = nncodec_table(a.model, a.data, a.artifacts, a.overrides)
    out = a.out or a.artifacts / "bench"
    out.mkdir(parents=True, exist_ok=True)
    # a data spec KIND:PATH and a model FILE.py:factory / FILE.onnx are named by their file's stem
    names = [Path(a.model.split(":", 1)[0]).stem, Path(a.data.split(":", 1)[-1]).stem]
    stem = out / re.sub(r"[^A-Za-z0-9._-]+", "_", "nncodec-{}-{}".format(*names))
    stem.with_suffix(".json").write_text(json.dumps(table, indent=2) + "\n")
    md = md_table(table)
    stem.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
