"""ORT format (``.ort``) for ONNX Runtime Mobile, ``required_operators.config`` for a reduced build, and an
NNAPI / CoreML usability summary from ONNX Runtime's own checker.

Both tools run in a subprocess (``sys.executable -m onnxruntime.tools...``): they configure global logging, print
freely and may abort on odd graphs; none of that reaches the pipeline's process.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_write_bytes
from pipeline.errors import InputError, ValidationError

_TOOL_TIMEOUT_S = 600


def _run_tool(args: list[str], timeout: float = _TOOL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <tool> ...`` with single-threaded ORT and captured output."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def convert_to_ort(onnx_path: str | Path, out_dir: str | Path) -> dict:
    """Convert an ONNX model to ORT format with ``onnxruntime.tools.convert_onnx_models_to_ort``.

    The converter gets a copy of the model alone in a temp folder (it converts every ``.onnx`` it finds); its
    ``.ort`` and ``required_operators.config`` are then written atomically as ``out_dir/model.ort`` and
    ``out_dir/required_operators.config``. The "Fixed" optimization style without ``--target_platform`` leaves out
    the x86-only NCHWc transformer, so the file stays portable to ARM phones.

    Args:
        onnx_path: the ``.onnx`` model (produced by this pipeline: ORT has no sandbox).
        out_dir: destination folder.

    Returns:
        ``{"ort_path", "config_path", "bytes", "log"}``.

    Raises:
        InputError: the model file does not exist.
        ValidationError: the converter failed or did not produce exactly one ``.ort`` and one config.
    """
    src = Path(onnx_path)
    if not src.is_file():
        raise InputError(f"convert_to_ort: {src} does not exist; export the ONNX model first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lrd-ort-") as td:
        tmp = Path(td)
        model_copy = tmp / "in" / "model.onnx"
        model_copy.parent.mkdir()
        shutil.copyfile(src, model_copy)
        res = _run_tool(["onnxruntime.tools.convert_onnx_models_to_ort", str(model_copy), "--output_dir", str(tmp / "out"),
                         "--optimization_style", "Fixed"])
        log = (res.stdout + res.stderr).strip()
        ort_files = sorted((tmp / "out").glob("*.ort")) if (tmp / "out").is_dir() else []
        cfg_files = sorted((tmp / "out").glob("*.config")) if (tmp / "out").is_dir() else []
        if res.returncode != 0 or len(ort_files) != 1 or len(cfg_files) != 1:
            raise ValidationError(
                f"convert_to_ort: converting {src.name} failed (exit {res.returncode}, produced "
                f"{[p.name for p in ort_files + cfg_files]}); tool output:\n{log[-4000:]}"
            )
        ort_path = out / "model.ort"
        config_path = out / "required_operators.config"
        atomic_write_bytes(ort_path, ort_files[0].read_bytes())
        atomic_write_bytes(config_path, cfg_files[0].read_bytes())
    return {
        "ort_path": str(ort_path),
        "config_path": str(config_path),
        "bytes": ort_path.stat().st_size,
        "log": log.splitlines()[-20:],
    }


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


def mobile_usability(onnx_path: str | Path) -> dict:
    """Summarise how well NNAPI and CoreML could run the model, with ``check_onnx_model_mobile_usability``.

    Never raises: a missing file, a crash or a timeout of the tool is recorded in ``"error"`` so the export does not
    fail on a diagnostic.

    Args:
        onnx_path: the ``.onnx`` model.

    Returns:
        ``{"model", "summary": {ep: {"as_is": {...}, "fixed_shapes": {"partitions", "supported_nodes", "nodes",
        "supported_pct"}, "verdict_as_is", "verdict_fixed_shapes", "supported_pct_fixed_shapes",
        "unsupported_ops"}}, "log": [lines], "returncode", "error": str | None}``; ep is ``NNAPI``,
        ``CoreML NeuralNetwork`` or ``CoreML MLProgram``.
    """
    path = Path(onnx_path)
    result: dict[str, Any] = {"model": path.name, "summary": {}, "log": [], "returncode": None, "error": None}
    try:
        if not path.is_file():
            raise InputError(f"{path} does not exist")
        res = _run_tool(["onnxruntime.tools.check_onnx_model_mobile_usability", str(path)])
        text = res.stdout + "\n" + res.stderr
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
