"""Mobile deliverables: ``.ort`` files per target, a fixed-batch variant, and ONNX Runtime's NNAPI / CoreML usability
checker run on the graph each shipped ``.ort`` file really holds.

Targets (:data:`MOBILE_TARGETS`): a compiling EP (NNAPI, CoreML) takes a Runtime-style file (basic optimizations
only, no ``com.microsoft`` ops; the rest saved and replayed on whatever the EP leaves to the CPU) and, because
NNAPI/CoreML refuse dynamic shapes, also a batch-1 copy; the generic CPU target takes a Fixed-style file (all
portable optimizations baked in, fused contrib ops allowed).

What the checker sees: it reads ONNX, not ``.ort``; so for each shipped ``.ort`` the same optimization level is
applied to its source ``.onnx`` and saved as ONNX (:func:`stored_graph`), its node list is compared with the nodes
stored in the ``.ort`` (``graph_matches_shipped``), and the checker runs on that graph. Results are keyed by the
shipped file name, so a report row names the file it describes.
"""
from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from exporters.metadata import DeployMeta, for_file, set_metadata
from exporters.ort_convert import CONFIG_NAME, contrib_ops, convert_models, convert_to_ort, ort_nodes, run_tool
from exporters.ort_fixups import runtime_safe_source
from pipeline.artifacts import atomic_write_bytes
from pipeline.errors import ConfigError, InputError, ValidationError

__all__ = ["MOBILE_TARGETS", "RUNTIME_SESSION_CONFIG", "MobileTarget", "build_mobile", "convert_to_ort", "fix_batch", "get_mobile_target",
           "mobile_usability", "stored_graph"]


@dataclass(frozen=True)
class MobileTarget:
    """How the ``.ort`` files for one kind of device are made."""

    name: str
    style: str  # "Runtime" | "Fixed" (see exporters.ort_convert.convert_models)
    allow_contrib: bool  # may the stored graph hold com.microsoft ops
    fixed_batch: int | None  # also ship a copy with this batch size (NNAPI/CoreML need static shapes)
    target_platform: str | None = None
    note: str = ""


MOBILE_TARGETS: dict[str, MobileTarget] = {
    "nnapi": MobileTarget("nnapi", "Runtime", False, 1, note="Android NNAPI EP; Runtime style, batch-1 copy"),
    "coreml": MobileTarget("coreml", "Runtime", False, 1, note="iOS CoreML EP; Runtime style, batch-1 copy"),
    "cpu": MobileTarget("cpu", "Fixed", True, None, note="ORT Mobile CPU EP (ARM or x86); Fixed style"),
}


# A Runtime-style file runs its saved optimizations (e.g. QDQ -> QLinearConv on the CPU EP's nodes) only with this
# session option; without it the int8 graph runs as float DequantizeLinear -> Conv -> QuantizeLinear, which rounds
# differently from the .onnx. model.json tells apps to set it (trusted models only: our own files).
RUNTIME_SESSION_CONFIG: dict[str, str] = {"session.enable_saved_runtime_optimizations": "1"}


def get_mobile_target(name: str) -> MobileTarget:
    """The :class:`MobileTarget` called ``name``; ConfigError listing the known ones otherwise."""
    try:
        return MOBILE_TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown mobile target {name!r}; choose one of {sorted(MOBILE_TARGETS)}") from None


_EPS = ("NNAPI", "CoreML MLProgram", "CoreML NeuralNetwork", "CoreML")
_PART_RE = re.compile(r"(\d+)\s+partitions?\s+with a total of\s+(\d+)/(\d+)\s+nodes", re.I)
_AS_IS_RE = re.compile(r"Model should perform well with (.+?) as is:\s*(\w+)", re.I)
_FIXED_RE = re.compile(r"Model should perform well with (.+?) if modified to have fixed input shapes:\s*(\w+)", re.I)
_UNSUP_RE = re.compile(r"Unsupported ops:\s*(.*)", re.I)
_CHECK_RE = re.compile(r"Checking (?:if model will run using|)\s*(NNAPI|CoreML(?: MLProgram| NeuralNetwork)?)", re.I)


def _ep_of(line: str, current: str | None) -> str | None:
    """Which EP a log line talks about (the checker prints one section per EP)."""
    m = _CHECK_RE.search(line)
    if m:
        return " ".join(m.group(1).split())
    return current


def _parse_usability(text: str) -> dict[str, dict[str, Any]]:
    """Per-EP summary from the checker's log lines.

    Each EP section reports partitions twice: for the model as is (``dynamic``: a dynamic batch makes NNAPI/CoreML
    refuse nodes) and as if input shapes were fixed (``fixed``); both are kept, with the verdicts and unsupported ops.
    """
    summary: dict[str, dict[str, Any]] = {}
    current: str | None = None
    section = "as_is"
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("INFO:"):
            line = line[len("INFO:"):].strip()
        ep = _ep_of(line, None)
        if ep is not None:
            current, section = ep, "as_is"
            continue
        if "if the model was updated to make the shapes fixed" in line:
            section = "fixed_shapes"
            continue
        m = _AS_IS_RE.search(line)
        if m:
            summary.setdefault(" ".join(m.group(1).split()), {})["verdict_as_is"] = m.group(2).upper()
            continue
        m = _FIXED_RE.search(line)
        if m:
            summary.setdefault(" ".join(m.group(1).split()), {})["verdict_fixed_shapes"] = m.group(2).upper()
            continue
        if current is None:
            continue
        m = _PART_RE.search(line)
        if m:
            parts, sup, tot = (int(v) for v in m.groups())
            summary.setdefault(current, {})[section] = {
                "partitions": parts, "supported_nodes": sup, "nodes": tot,
                "supported_pct": round(100.0 * sup / tot, 2) if tot else 0.0,
            }
            continue
        m = _UNSUP_RE.search(line)
        if m:
            ops = {o.strip() for o in m.group(1).split(",") if o.strip()}
            entry = summary.setdefault(current, {})
            entry["unsupported_ops"] = sorted(set(entry.get("unsupported_ops", [])) | ops)
    for entry in summary.values():
        best = entry.get("fixed_shapes") or entry.get("as_is") or {}
        entry["supported_pct_fixed_shapes"] = best.get("supported_pct")
        entry.setdefault("unsupported_ops", [])
    return summary


def mobile_usability(onnx_path: str | Path, name: str | None = None) -> dict:
    """Summarise how well NNAPI and CoreML could run the model, with ``check_onnx_model_mobile_usability``.

    The checker runs in the model's folder on its bare file name, so its log names no (temporary) path; ``name``
    (default: the file's name) is what the result says it describes. Never raises: a missing file, a crash or a
    timeout of the tool is recorded in ``"error"`` so the export does not fail on a diagnostic.

    Returns:
        ``{"model", "summary": {ep: {"as_is": {...}, "fixed_shapes": {"partitions", "supported_nodes", "nodes",
        "supported_pct"}, "verdict_as_is", "verdict_fixed_shapes", "supported_pct_fixed_shapes",
        "unsupported_ops"}}, "log": [lines], "returncode", "error": str | None}``; ep is ``NNAPI``,
        ``CoreML NeuralNetwork`` or ``CoreML MLProgram``.
    """
    path = Path(onnx_path)
    label = name or path.name
    result: dict[str, Any] = {"model": label, "summary": {}, "log": [], "returncode": None, "error": None}
    try:
        if not path.is_file():
            raise InputError(f"{label} does not exist")
        res = run_tool(["onnxruntime.tools.check_onnx_model_mobile_usability", path.name], cwd=path.parent.resolve())
        text = (res.stdout + "\n" + res.stderr).replace(str(path.parent.resolve()), ".")
        if label != path.name:
            text = text.replace(path.name, label)
        result["returncode"] = res.returncode
        result["log"] = [ln for ln in text.splitlines() if ln.strip()][-200:]
        result["summary"] = _parse_usability(text)
        if res.returncode != 0:
            result["error"] = f"checker exited with {res.returncode}: {text.strip()[-500:]}"
        elif not result["summary"]:
            result["error"] = "checker output had no NNAPI/CoreML lines to parse"
    except Exception as e:  # a diagnostic must never fail the export
        result["error"] = f"{type(e).__name__}: {e}"
    return result


# ----------------------------------------------------------------------------------------------- graphs
def stored_graph(onnx_path: str | Path, out_path: str | Path, style: str) -> Path:
    """Save as ONNX the graph a ``style`` conversion stores in the ``.ort`` (for the checker, which reads ONNX).

    Runtime style stores the basic-level graph (the rest are saved records); Fixed style stores the all-level graph
    without the x86-only NCHWc transformer, with int8 QDQ kept as on non-ARM conversions, as the converter does.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(out_path)
    disabled: list[str] | None = None
    if style == "Runtime":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    else:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.qdqisint8allowed", "0")
        disabled = ["NchwcTransformer"]
    ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=disabled)
    return Path(out_path)


def _onnx_ops(path: Path) -> Counter:
    import onnx

    return Counter((n.domain if n.domain != "ai.onnx" else "", n.op_type) for n in onnx.load(str(path)).graph.node)


def fix_batch(src: str | Path, dst: str | Path, batch: int = 1, meta: DeployMeta | None = None) -> dict:
    """Copy of ``src`` with the symbolic batch axis (axis 0 of the inputs, the same symbol in the outputs) fixed.

    NNAPI and CoreML only take static shapes. Shapes inside the graph are re-inferred. Metadata is kept; with
    ``meta`` the ``lowrank.*`` keys are rewritten for this copy (``lowrank.batch`` = ``batch``).

    Returns:
        ``{"path", "batch", "dim_params"}`` with the symbolic names that were fixed.
    """
    import onnx

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"fix_batch: {src} does not exist; export the model first")
    proto = onnx.load(str(src))
    # The batch is axis 0 of the inputs; an output carries it wherever its symbol appears (a CTC head's [T, N, K]
    # has it on axis 1), so outputs are fixed by symbol, never by position.
    params: set[str] = set()
    for v in proto.graph.input:
        dims = v.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            params.add(dims[0].dim_param)
        if dims:
            dims[0].Clear()
            dims[0].dim_value = int(batch)
    for v in proto.graph.output:
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in params:
                d.Clear()
                d.dim_value = int(batch)
    del proto.graph.value_info[:]  # stale symbolic shapes; re-inferred below
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    if meta is not None:
        set_metadata(proto, for_file(meta, fixed_batch=batch))
    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ValidationError(f"fix_batch: the batch-{batch} copy of {src.name} fails the ONNX checker: {e}") from e
    atomic_write_bytes(dst, data)
    return {"path": str(dst), "batch": int(batch), "dim_params": sorted(params)}


# ----------------------------------------------------------------------------------------------- deliverables
def build_mobile(models: Mapping[str, str | Path], out_dir: str | Path, target: str = "nnapi",
                 check: bool = True, meta: DeployMeta | None = None) -> dict[str, Any]:
    """Every mobile file for ``target`` from the shipped ``.onnx`` models, with checks on exactly those files.

    For each ``name.onnx`` in ``models`` (e.g. ``{"model.onnx": fp32, "model.int8.onnx": int8}``): when the target
    needs a fixed batch, ``name.b1.onnx`` (written to ``out_dir``); then one converter run over all of them gives
    ``name.ort`` / ``name.b1.ort`` and one combined ``required_operators.config``. Each ``.ort`` is then checked:
    no ``com.microsoft`` ops unless the target allows them (ValidationError otherwise), and the usability checker
    runs on the graph it stores. ``meta`` (the sources' metadata) is written into the batch-1 copies with
    ``lowrank.batch`` = 1; the sources should already carry it (``exporters.metadata.write_metadata``), since the
    ``.ort`` files copy the metadata of the ``.onnx`` they come from.

    Returns:
        ``{"target", "style", "files": [every file written, sorted], "ort": {ort name: {"source", "bytes",
        "sha256", "ops", "contrib_ops", "style", "session_config" (the ORT session options an app sets to load it)}}, "fixed": {b1 onnx name: source name}, "config", "reproducible",
        "usability": {ort name: mobile_usability(...) + "graph_matches_shipped"}}``.
    """
    t = get_mobile_target(target)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = {Path(n).name: Path(p) for n, p in models.items()}
    fixed: dict[str, str] = {}
    if t.fixed_batch is not None:
        for n, p in list(sources.items()):
            b_name = f"{Path(n).stem}.b{t.fixed_batch}.onnx"
            fix_batch(p, out / b_name, t.fixed_batch, meta=meta)
            fixed[b_name] = n
            sources[b_name] = out / b_name
    with tempfile.TemporaryDirectory(prefix="lrd-mobile-") as td:
        if t.style == "Runtime":  # see exporters.ort_fixups: a float Conv between QDQ pairs breaks the converter
            for k, (n, p) in enumerate(list(sources.items())):
                (Path(td) / str(k)).mkdir()
                sources[n] = runtime_safe_source(Path(p), Path(td) / str(k))
        return _convert_and_check(t, sources, out, fixed, check)


def _convert_and_check(t: MobileTarget, sources: dict[str, Path], out: Path, fixed: dict[str, str],
                       check: bool) -> dict[str, Any]:
    """One converter run over ``sources`` (shipped name -> graph to convert), then the checks per ``.ort``."""
    conv = convert_models(list(sources.values()), out, style=t.style, target_platform=t.target_platform,
                          names=list(sources))
    result: dict[str, Any] = {"target": t.name, "style": t.style, "fixed": fixed, "config": CONFIG_NAME,
                              "config_sha256": conv["config_sha256"], "reproducible": conv["reproducible"],
                              "ort": {}, "usability": {}}
    for ort_name, info in conv["files"].items():
        bad = contrib_ops(out / ort_name)
        if bad and not t.allow_contrib:
            raise ValidationError(f"mobile: {ort_name} for target {t.name} holds contrib ops {bad}, which "
                                  f"{t.name} cannot run; use the Runtime optimization style for this target")
        result["ort"][ort_name] = {**info, "contrib_ops": bad, "style": t.style,
                                   "session_config": dict(RUNTIME_SESSION_CONFIG) if t.style == "Runtime" else {}}
        if check:
            result["usability"][ort_name] = _check_shipped(sources[info["source"]], out / ort_name, t.style)
    result["files"] = sorted(set(fixed) | set(conv["files"]) | {CONFIG_NAME})
    return result


def _check_shipped(onnx_path: Path, ort_path: Path, style: str) -> dict[str, Any]:
    """The usability checker on the graph ``ort_path`` stores, labelled with the ``.ort`` name."""
    with tempfile.TemporaryDirectory(prefix="lrd-check-") as td:
        graph = stored_graph(onnx_path, Path(td) / (ort_path.stem + ".onnx"), style)
        stored = Counter(ort_nodes(ort_path))
        res = mobile_usability(graph, name=ort_path.name)
        res["graph_matches_shipped"] = _onnx_ops(graph) == stored
        res["checked_graph"] = f"{onnx_path.name} optimized as {style} style (the graph stored in {ort_path.name})"
    return res
