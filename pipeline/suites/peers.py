"""Suite ``peers``: our shipped files beside what an engineer would otherwise use, on the same model, in one run.

For each model/dataset: the default pipeline run (cached stages reused) gives the original fp32 graph, our shipped
variant, our int8 graph and the container. Beside them: ONNX Runtime static int8 of the original (no factorization,
same calibration images and quantizer settings), fp16 weight storage of the original, and gzip/xz/zstd of each
shipped file; the optional peers (:mod:`.optional_peers`, and NNCodec lossy weight coding of the original and of
our decomposed fp32 model at several qps, :mod:`.nncodec_peer`) where installed. Every graph is timed in one
interleaved loop (batch 1, 1 thread); accuracies are on the same test split. Full: vgg11 and resnet20 on digits
and shapes. Quick: the ``tiny`` network on the quick data set.
"""
from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy import onnx_accuracy
from benchmarks.report.plots import scatter
from benchmarks.storage import artifact_bytes
from pipeline.checkpoint import load_card, load_model
from pipeline.quantize.ort_static import quantize_static
from pipeline.stage_api import config_dataset
from pipeline.suites._common import QUICK_MODEL, QUICK_OVERRIDES, Table, datasets, pipeline_run, quick_data, \
    time_files
from pipeline.suites.nncodec_peer import QP_DENSITY, code_onnx
from pipeline.suites.optional_peers import nncf_ptq, tltorch_tucker, torch_pruning_kd
from pipeline.suites.peer_variants import COMPRESSORS, NOT_MEASURED, compress_file, fp16_weights, missing_peers


def _cases(quick: bool) -> list[tuple[str, str]]:
    if quick:
        return [(QUICK_MODEL, "quick")]
    return [(m, d) for d in datasets() for m in ("vgg11", "resnet20")]


def _row(model: str, data: str, variant: str, ours: bool, size: int, acc: float | None, p50: float | None,
         base: dict[str, Any], decode_mb_s: float | None = None) -> dict[str, Any]:
    return {"model": model, "data": data, "variant": variant, "ours": ours, "size_bytes": int(size),
            "accuracy": acc, "p50_ms": None if p50 is None else round(p50, 4),
            "smaller": round(base["size_bytes"] / size, 2),
            "speedup": None if p50 is None else round(base["p50_ms"] / p50, 2),
            "decode_mb_s": None if decode_mb_s is None else round(decode_mb_s, 1)}


def _measure_case(model: str, data: str, root: Path, quick: bool, samples: int) -> list[dict[str, Any]]:
    spec = quick_data(root) if data == "quick" else data
    # full runs keep the default fidelity gate (pipeline_run opens it for the lossy suites), so "ours" is what the
    # default run ships; the quick smoke run (one epoch of a tiny net) keeps it open
    extra = QUICK_OVERRIDES if quick else ["benchmark.max_drop=0.01"]
    res, cfg = pipeline_run(model, spec, root, extra + ["export.mobile=false"])
    rep = json.loads(res.artifact("benchmark").path("report.json").read_text())
    by = {v["name"]: v for v in rep["variants"]}
    mdir = res.artifact("export").dir.parent
    shipped = rep["headline"]["shipped"]
    ds = config_dataset(cfg)  # the test split the run's report measured
    x = ds.test.x.numpy().astype(np.float32)
    y = ds.test.y.numpy()
    shape = load_card(res.artifact("baseline").dir).input_shape
    original = mdir / by["original"]["file"]
    with tempfile.TemporaryDirectory(prefix="lrd-peers-") as td:
        t = Path(td)
        ort_int8 = t / "original.int8.onnx"
        calib = ds.train.x[: cfg.quantize.calib_size].numpy().astype(np.float32)
        quantize_static(original, ort_int8, calib, cfg.quantize)
        fp16 = fp16_weights(original, t / "original.fp16.onnx")
        graphs = {"original fp32": original, "ORT int8 of original": ort_int8, "fp16 weights of original": fp16}
        # the graphs we ship: the container ("unpacked") decodes to the int8 graph, which is what runs
        ours = {"ours: int8" + (" (shipped)" if shipped == "int8" else ""): "int8"}
        if shipped == "finetuned":
            ours["ours: fp32 decomposed (shipped)"] = "finetuned"
        graphs.update({n: mdir / by[v]["file"] for n, v in ours.items()})
        graphs.update(_optional_graphs(res, cfg, ds, original, calib, shape, t))
        lat = time_files(graphs, shape, samples)
        acc = {n: float(onnx_accuracy(p, x, y)) for n, p in graphs.items()
               if not n.startswith("ours") or n == OURS_SAME_RANKS}
        base = {"size_bytes": artifact_bytes(original), "p50_ms": lat["original fp32"]["p50"]}
        rows = []
        for n, p in graphs.items():
            a = acc.get(n, by[ours[n]]["accuracy"] if n in ours else None)
            rows.append(_row(model, data, n, n.startswith("ours"), artifact_bytes(p), a, lat[n]["p50"], base))
        unpacked = by["unpacked"]
        stats = res.artifact("entropy-code").metrics
        rows.append(_row(model, data, "ours: container (weights.lrdc" + (", shipped)" if shipped == "unpacked" else ")"),
                         True, unpacked["size_bytes"], unpacked["accuracy"], None, base, stats.get("decode_mb_s")))
        int8_name = next(n for n, v in ours.items() if v == "int8")
        # general-purpose compressors of the files an app could ship instead of the container
        for n in ("original fp32", "ORT int8 of original", int8_name):
            for cname in COMPRESSORS:
                c = compress_file(graphs[n], cname)
                a = acc.get(n, by["int8"]["accuracy"] if n in ours else None)
                rows.append(_row(model, data, f"{cname} of {n}", False, c["size_bytes"], a, None, base,
                                 c["decode_mb_s"]))
        if "NNCodec" not in missing_peers():
            sources = {"original": original, "our decomposed fp32": mdir / by["finetuned"]["file"]}
            rows += _nncodec_rows(model, data, sources, x, y, base, t)
    return rows


#: NNCodec's weight qps the suite codes at (qp_density 2: 4 qp units halve the step): from about its default
#: (-38, step 2^-9.4, near-lossless) to clearly lossy (-20, step 2^-5)
NNCODEC_QPS = (-38, -32, -26, -24, -22, -20)


def _nncodec_rows(model: str, data: str, sources: dict[str, Path], x: np.ndarray, y: np.ndarray,
                  base: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    """NNCodec lossy coding of each source's float weights at :data:`NNCODEC_QPS`: size (bitstream + its graph),
    accuracy of the model rebuilt from the decoded weights, decode speed (same graph as the source: no p50)."""
    rows = []
    for label, src in sources.items():
        for qp in NNCODEC_QPS:
            rebuilt = tmp / f"nncodec{qp}.onnx"
            r = code_onnx(src, rebuilt, qp)
            row = _row(model, data, f"NNCodec qp={qp} of {label}", False, r["size_bytes"],
                       float(onnx_accuracy(rebuilt, x, y)), None, base, r["decode_mb_s"])
            row.update(bitstream_bytes=r["bitstream_bytes"], graph_bytes=r["graph_bytes"])
            rows.append(row)
            rebuilt.unlink()
    return rows


OURS_SAME_RANKS = "ours: factorized, no finetune (tensorly-torch's ranks)"


def _optional_graphs(res, cfg, data, original: Path, calib: np.ndarray, shape: tuple[int, int, int],
                     tmp: Path) -> dict[str, Path]:
    """The installed optional peers' ONNX files (see :mod:`pipeline.suites.optional_peers`)."""
    missing = set(missing_peers())
    out: dict[str, Path] = {}
    if "NNCF PTQ" not in missing:
        out["NNCF PTQ int8 of original"] = nncf_ptq(original, tmp / "original.nncf.onnx", calib)
    structure = load_card(res.artifact("factorize").dir).structure
    if "tensorly-torch" not in missing and any(e.get("format") == "tucker2" for e in structure.values()):
        dense, _ = load_model(res.artifact("baseline").dir)
        out["tensorly-torch Tucker at our ranks, no finetune"] = tltorch_tucker(dense, structure, shape,
                                                                                tmp / "tltorch.onnx")
        out[OURS_SAME_RANKS] = res.artifact("export").path("factorized.onnx")
    if "Torch-Pruning" not in missing:
        dense, _ = load_model(res.artifact("baseline").dir)
        target = int(res.artifact("factorize").metrics["macs_after"])
        out["Torch-Pruning at our MACs + same KD"], _ = torch_pruning_kd(dense, target, data, cfg.finetune, cfg.seed,
                                                                         shape, tmp / "pruned.onnx")
    return out


def _plots(rows: list[dict[str, Any]]):
    """A writer of the Pareto plots (accuracy vs size, accuracy vs p50) per model/dataset into the suite's folder."""
    def write(out: Path) -> list[str]:
        import matplotlib

        matplotlib.use("Agg", force=True)
        names = []
        for key in dict.fromkeys((r["model"], r["data"]) for r in rows):
            pts = [{"name": r["variant"], "accuracy": r["accuracy"], "size_bytes": r["size_bytes"],
                    "p50_ms": r["p50_ms"]} for r in rows if (r["model"], r["data"]) == key]
            for what, xkey, label, logx in (("size", "size_bytes", "size (bytes, log scale)", True),
                                            ("latency", "p50_ms", "p50 latency (ms)", False)):
                png = scatter(pts, lambda v, k=xkey: v.get(k), label, f"{key[0]} on {key[1]}: accuracy vs {what}",
                              logx)
                if png:
                    name = f"peers-{key[0]}-{key[1]}-{what}.png"
                    (out / name).write_bytes(base64.b64decode(png))
                    names.append(name)
        return names
    return write


def bench_peers(quick: bool = False, root: Path = Path("artifacts")) -> Table:
    """Size, accuracy, p50 and decode speed of our shipped files and of the peers, per model/dataset."""
    samples = 5 if quick else 200
    rows: list[dict[str, Any]] = []
    for model, data in _cases(quick):
        rows += _measure_case(model, data, root, quick, samples)
    missing = missing_peers()
    return {
        "title": "Peers side by side: our shipped files vs ORT int8 / fp16 of the original and general-purpose "
                 "compressors",
        "settings": f"default pipeline config; latency: {samples} interleaved samples per graph in one loop, batch 1, "
                    "ORT CPU 1 thread; ORT int8 = static QDQ of the original with the run's calibration images and "
                    "quantizer settings; fp16 = fp16 weight storage, fp32 compute; compressors: lossless, so "
                    "accuracy is the compressed file's",
        "columns": ["model", "data", "variant", "ours", "size_bytes", "smaller", "accuracy", "p50_ms", "speedup",
                    "decode_mb_s"],
        "rows": rows,
        "missing_peers": missing,
        "notes": ["smaller / speedup: against the original fp32 ONNX of the same row group",
                  "decode_mb_s: decoded bytes per second (container: its weight streams, from the entropy-code "
                  "stage; compressors: whole-file decompression, median of 3)",
                  "optional peers not installed here (pip install '.[peers]'): " + (", ".join(missing) or "none"),
                  f"NNCodec: nnc_core {'/'.join(map(str, NNCODEC_QPS))} weight qps, its other defaults (qp_density "
                  f"{QP_DENSITY}, dependent quantization, 1-D tensors at qp -75); size = NNC bitstream of every fp32 "
                  "initializer + zstd -19 of the graph without them (json: bitstream_bytes, graph_bytes); "
                  "accuracy of the graph with the decoded weights; decode_mb_s: decoded fp32 bytes per second",
                  *(["not measured by this suite yet: " + "; ".join(NOT_MEASURED)] if NOT_MEASURED else [])],
        "_plots": _plots(rows),
    }
