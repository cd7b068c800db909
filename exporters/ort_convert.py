"""ONNX -> ORT format (``.ort``) with ``onnxruntime.tools.convert_onnx_models_to_ort``, reproducibly.

Reproducible bytes. Two conversions of one ``.onnx`` differ in a few hundred bytes when run as ORT runs by default:
the ORT file's kernel-type-string table is written from an ``absl`` hash map whose hash seed is the address of a
static variable, so its physical order follows address-space layout randomisation (the logical content is the
same; the tables are sorted on read). The converter is therefore run

- with address-space randomisation off for that subprocess (``personality(ADDR_NO_RANDOMIZE)``: the same binary and
  libraries then load at the same addresses and the hash seed is fixed),
- with a fixed, minimal environment (the environment's size shifts the process's allocations),
- in its own working folder with relative paths (``in/<name>.onnx`` -> ``out/``), so no path is embedded;

and the comment lines of ``required_operators.config`` (absolute paths of the converter's temp files) are rewritten
to the shipped file names. Where the kernel refuses ``personality`` (some container seccomp profiles), the
conversion still works and the result says ``"reproducible": False``.

The tool runs in a subprocess: it configures global logging, prints freely and may abort on odd graphs.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from pipeline.artifacts import atomic_write_bytes, sha256_bytes
from pipeline.errors import InputError, ValidationError

TOOL_TIMEOUT_S = 600
CONFIG_NAME = "required_operators.config"
STYLES = ("Fixed", "Runtime")
_ADDR_NO_RANDOMIZE = 0x0040000


# Runs in a fresh, single-threaded interpreter (never a preexec hook in our own, threaded process): turn address-space
# randomisation off, then exec the real command, which inherits the personality.
_TRAMPOLINE = (
    "import ctypes, os, sys\n"
    "try:\n"
    "    libc = ctypes.CDLL(None, use_errno=True)\n"
    "    cur = libc.personality(0xFFFFFFFF)\n"
    f"    if cur != -1: libc.personality(cur | {_ADDR_NO_RANDOMIZE})\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])\n"
)


def _python(args: Sequence[str], deterministic: bool) -> list[str]:
    if deterministic and sys.platform.startswith("linux"):
        return [sys.executable, "-c", _TRAMPOLINE, *args]
    return [sys.executable, *args]


@functools.lru_cache(maxsize=1)
def aslr_can_be_disabled() -> bool:
    """Whether a child process here really runs with randomisation off (checked, not assumed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        res = subprocess.run(_python(["-c", "print(open('/proc/self/personality').read().strip())"], True),
                             capture_output=True, text=True, timeout=60, env=_env(), check=False)
        return res.returncode == 0 and bool(int(res.stdout.strip() or "0", 16) & _ADDR_NO_RANDOMIZE)
    except (OSError, ValueError, subprocess.SubprocessError):
        return False


def _env() -> dict[str, str]:
    """Fixed environment of the tool: single-threaded, no user settings that change allocations or imports."""
    env = {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C"}
    # Loader paths are needed where onnxruntime's libraries live outside the default search path (conda, modules).
    for k in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def run_tool(args: Sequence[str], cwd: str | Path | None = None, deterministic: bool = False,
             timeout: float = TOOL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <tool> ...`` with captured output (and, if asked, fixed env and no randomisation)."""
    env = _env() if deterministic else {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(_python(["-m", *args], deterministic), capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=None if cwd is None else str(cwd), check=False)


def rewrite_config(text: str, names: Sequence[str]) -> str:
    """``required_operators.config`` with its ``# - <path>`` lines replaced by the shipped file names (sorted)."""
    body = [ln for ln in text.splitlines() if not ln.startswith("# - ") and not ln.startswith("# Generated from")]
    head = ["# Generated from model/s:"] + [f"# - {n}" for n in sorted(set(names))]
    return "\n".join(head + body) + "\n"


def _ort_name(onnx_name: str) -> str:
    return Path(onnx_name).with_suffix(".ort").name


def convert_models(onnx_paths: Sequence[str | Path], out_dir: str | Path, style: str = "Runtime",
                   target_platform: str | None = None, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Convert several ONNX models in one converter run; write ``<stem>.ort`` each and one combined config.

    Args:
        onnx_paths: the ``.onnx`` models (produced by this pipeline: ORT has no sandbox); distinct file names.
        out_dir: destination folder; ``model.onnx`` becomes ``out_dir/model.ort``.
        style: ``"Runtime"`` (basic optimizations applied, the rest saved to replay on nodes a compiling EP such as
            NNAPI/CoreML leaves to the CPU: the stored graph has no ``com.microsoft`` ops) or ``"Fixed"`` (all
            portable optimizations baked in, CPU EP; may hold ``com.microsoft`` fused ops).
        target_platform: ``None`` (portable: x86-only NCHWc transformer left out) or ``"arm"``.
        names: shipped ``.onnx`` names to convert as (default: the files' own names).

    Returns:
        ``{"style", "files": {ort_name: {"source", "bytes", "sha256", "ops": {"domain:op": n}}},
        "config": CONFIG_NAME, "config_sha256", "reproducible", "log"}``.

    Raises:
        InputError: a model file is missing. ValidationError: the converter failed or wrote something unexpected.
    """
    if style not in STYLES:
        raise ValidationError(f"convert_models: unknown optimization style {style!r}; use one of {STYLES}")
    srcs = [Path(p) for p in onnx_paths]
    names = [Path(n).name for n in (names or [p.name for p in srcs])]
    for p in srcs:
        if not p.is_file():
            raise InputError(f"convert_to_ort: {p} does not exist; export the ONNX model first")
    if len(set(names)) != len(names) or not all(n.endswith(".onnx") for n in names):
        raise ValidationError(f"convert_models: need distinct .onnx file names, got {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deterministic = aslr_can_be_disabled()
    suffix = ".with_runtime_opt.ort" if style == "Runtime" else ".ort"
    with tempfile.TemporaryDirectory(prefix="lrd-ort-") as td:
        work = Path(td)
        (work / "in").mkdir()
        for p, n in zip(srcs, names):
            shutil.copyfile(p, work / "in" / n)
        args = ["onnxruntime.tools.convert_onnx_models_to_ort", "in", "--output_dir", "out",
                "--optimization_style", style]
        if target_platform:
            args += ["--target_platform", target_platform]
        res = run_tool(args, cwd=work, deterministic=True)
        log = (res.stdout + res.stderr).replace(str(work), "<work>").strip()
        produced = {p.name for p in (work / "out").iterdir()} if (work / "out").is_dir() else set()
        expected = {Path(n).stem + suffix for n in names}
        cfgs = sorted(n for n in produced if n.endswith(".config"))
        if res.returncode != 0 or not expected <= produced or len(cfgs) != 1:
            raise ValidationError(
                f"convert_to_ort: converting {names} failed (exit {res.returncode}, produced {sorted(produced)}); "
                f"tool output:\n{log[-4000:]}")
        files: dict[str, Any] = {}
        for n in names:
            data = (work / "out" / (Path(n).stem + suffix)).read_bytes()
            name = _ort_name(n)
            atomic_write_bytes(out / name, data)
            files[name] = {"source": n, "bytes": len(data), "sha256": sha256_bytes(data),
                           "ops": op_counts(out / name)}
        config = rewrite_config((work / "out" / cfgs[0]).read_text(), list(files)).encode()
        atomic_write_bytes(out / CONFIG_NAME, config)
    return {"style": style, "target_platform": target_platform, "files": files, "config": CONFIG_NAME,
            "config_sha256": sha256_bytes(config), "reproducible": deterministic, "log": log.splitlines()[-20:]}


def convert_to_ort(onnx_path: str | Path, out_dir: str | Path, style: str = "Fixed") -> dict:
    """Convert one model to ``out_dir/<stem>.ort`` plus ``out_dir/required_operators.config``.

    Returns:
        ``{"ort_path", "config_path", "bytes", "log", "reproducible"}``.
    """
    res = convert_models([onnx_path], out_dir, style=style)
    (name, info), = res["files"].items()
    return {"ort_path": str(Path(out_dir) / name), "config_path": str(Path(out_dir) / CONFIG_NAME),
            "bytes": info["bytes"], "log": res["log"], "reproducible": res["reproducible"]}


# ----------------------------------------------------------------------------------------------- reading .ort
def ort_nodes(path: str | Path) -> list[tuple[str, str]]:
    """``(domain, op_type)`` of every node stored in a ``.ort`` file's main graph (read from the flatbuffer).

    Saved runtime optimizations (Runtime style) are not nodes: they are replayed only on nodes the CPU EP runs.
    """
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    buf = bytearray(Path(path).read_bytes())
    try:
        if not InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(buf, 0):
            raise ValueError("no ORTM file identifier")
        graph = InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0).Model().Graph()
        return [((graph.Nodes(i).Domain() or b"").decode(), graph.Nodes(i).OpType().decode())
                for i in range(graph.NodesLength())]
    except Exception as e:  # flatbuffers raises plain errors on malformed input
        raise InputError(f"{Path(path).name} is not a readable ORT-format model ({type(e).__name__}: {e})") from None


def op_counts(path: str | Path) -> dict[str, int]:
    """``{"domain:op": count}`` of a ``.ort`` file (``ai.onnx`` for the default domain), sorted."""
    c = Counter(f"{d or 'ai.onnx'}:{op}" for d, op in ort_nodes(path))
    return dict(sorted(c.items()))


def contrib_ops(path: str | Path) -> list[str]:
    """Ops of a ``.ort`` file outside the standard ONNX domains (e.g. ``com.microsoft:FusedConv``)."""
    return sorted({f"{d}:{op}" for d, op in ort_nodes(path) if d not in ("", "ai.onnx", "ai.onnx.ml")})
