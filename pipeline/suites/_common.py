"""What every suite shares: the table type and its Markdown, the measuring helpers, real pipeline runs, the quick
data set, and the loop that runs suites and writes their files (:func:`write_suites`)."""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from benchmarks.energy import onnx_layer_stats
from benchmarks.latency import measure_latency
from benchmarks.targets import get_target
from exporters.onnx import export_onnx
from pipeline.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline.config import FactorizeConfig, PipelineConfig, build_config
from pipeline.data import DATASETS
from pipeline.errors import LockError
from pipeline.runner import RunResult, run

# One suite's result: {"title", "settings", "columns", "rows": [{column: value}], "notes": [str], ...extra keys}.
Table = dict[str, Any]
Suite = Callable[..., Table]


def md_table(t: Table) -> str:
    """A suite table as a Markdown section: title, settings line, the table (missing cells empty), notes."""
    cols = t["columns"]
    lines = [f"### {t['title']}", ""]
    if t.get("settings"):
        lines += [f"Settings: {t['settings']}", ""]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in t["rows"]:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if v is None:  # not measured for this row (e.g. no latency for a compressed file)
                v = ""
            elif isinstance(v, float):
                v = f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
            elif isinstance(v, int) and abs(v) >= 10000:
                v = f"{v:,}"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    for n in t.get("notes", []):
        lines += ["", f"- {n}"]
    return "\n".join(lines) + "\n"


def fact_cfg(**kw: Any) -> FactorizeConfig:
    """A factorize config for the suites' own (non-pipeline) factorizations: every conv but the stem, no linears."""
    base: dict[str, Any] = dict(linear_method="none", min_channels=1, min_mac_saving=-0.99, skip_first=True)
    base.update(kw)
    return FactorizeConfig(**base)


def export(model: torch.nn.Module, shape: tuple[int, int, int], path: Path) -> Path:
    """Export ``model`` the way the pipeline does (opset 17, simplified); returns ``path``."""
    export_onnx(model, shape, path, opset=17, simplify=True)
    return path


def time_files(files: Mapping[str, Path], shape: tuple[int, int, int], samples: int, warmup: int = 5) -> dict[str, dict]:
    """Latency of every file, interleaved in one run, batch 1, 1 thread (``benchmarks.latency.measure_latency``)."""
    return measure_latency(dict(files), get_target("cpu"), shape, batch=1, samples=samples, warmup=warmup, threads=1,
                           seed=0)


def graph_macs(path: Path, shape: tuple[int, int, int]) -> int:
    """MACs counted from the ONNX graph at batch 1."""
    return int(onnx_layer_stats(path, shape)["macs"])


def pipeline_run(model: str, data: str, root: Path, overrides: list[str], upto: str | None = None,
                 wait_s: float = 7200.0) -> tuple[RunResult, PipelineConfig]:
    """Run the real pipeline (cached stages reused); wait while another suite holds this model's folder lock.

    Suites share baselines through the artifacts cache, so two suites started side by side queue on a model
    rather than fail.
    """
    # The suites measure lossy settings on purpose (their tables report the accuracy): the fidelity gate, which
    # decides what may ship, is opened here (an override in ``overrides`` still wins).
    cfg = build_config(None, ["benchmark.max_drop=1.0", *overrides], model=model, data=data, artifacts=str(root))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return run(cfg, progress=False, upto=upto), cfg
        except LockError:
            if time.monotonic() > deadline:
                raise
            time.sleep(5.0)


def datasets() -> list[str]:
    """The built-in data sets the pipeline suites use: digits, and shapes when it is registered."""
    return ["digits"] + (["shapes"] if "shapes" in DATASETS else [])


# Quick mode trains on this instead of digits: 240 single-channel 8x8 images in 4 classes, so a whole pipeline run
# takes seconds. Each class is a bright 3x3 patch in one quadrant plus noise: learnable in one epoch, not trivially.
QUICK_MODEL = "tiny"
QUICK_OVERRIDES = ["baseline.epochs=1", "finetune.epochs=1", "finetune.extra_epochs=0", "quantize.calib_size=32",
                   "benchmark.samples=5",
                   "benchmark.warmup=1", "benchmark.html=false", "factorize.budget.eval_samples=24"]


def quick_data(root: Path) -> str:
    """Write the quick data set under ``root`` (deterministic bytes, so its fingerprint is stable) and return its spec."""
    rng = np.random.default_rng(0)
    n, k = 240, 4
    y = np.arange(n) % k
    x = rng.normal(0.0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 0, 1 + 4 * r:4 + 4 * r, 1 + 4 * q:4 + 4 * q] += 1.0
    path = Path(root) / "bench-quick-data.npz"
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y.astype(np.int64))
    if not path.is_file() or path.read_bytes() != buf.getvalue():
        atomic_write_bytes(path, buf.getvalue())
    return f"npz:{path}"


def write_suites(names: list[str], suites: Mapping[str, Suite], out: Path, quick: bool, root: Path,
                 combined: Path | None) -> None:
    """Run each named suite, write ``<out>/<name>.json`` and ``.md`` (and print it), and the combined Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for n in names:
        t0 = time.perf_counter()
        table = suites[n](quick=quick, root=root)
        table["seconds"] = round(time.perf_counter() - t0, 1)
        plots = table.pop("_plots", None)  # a suite's figure writer: called with the folder, returns file names
        if plots is not None:
            table["plots"] = plots(out)
        atomic_write_json(out / f"{n}.json", table)
        md = md_table(table)
        atomic_write_text(out / f"{n}.md", md)
        parts.append(md)
        print(md, flush=True)
    if combined is not None:
        atomic_write_text(combined, "# lowrank-deploy benchmarks\n\n" + "\n".join(parts))
