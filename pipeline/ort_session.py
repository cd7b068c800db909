"""The one place that builds an ``onnxruntime.InferenceSession``.

Every layer (benchmarks, exporters, factorize, quantize, models) asks here for a session, so thread counts,
providers, the optimization level, the ``.ort`` format flag and profiling are set the same way everywhere.
Dependencies are kept to the standard library, onnxruntime and :mod:`pipeline.errors`, so any module may import this
one without an import circle.

Defaults are the polite ones for a shared machine: one intra-op and one inter-op thread, the CPU execution
provider, all graph optimizations, warnings and errors only in the log.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import onnxruntime as ort

from pipeline.errors import ConfigError, InputError

CPU: tuple[str, ...] = ("CPUExecutionProvider",)

OPT_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
EXEC_MODES: dict[str, ort.ExecutionMode] = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}


def make_session(
    path_or_bytes: str | Path | bytes,
    threads: int | None = 1,
    providers: Sequence[str] = CPU,
    opt_level: str = "all",
    profile: str | Path | None = None,
    *,
    inter_threads: int | None = 1,
    execution_mode: str = "sequential",
    session_config: Sequence[tuple[str, str]] = (),
    log_severity: int = 3,
) -> ort.InferenceSession:
    """Create an ONNX Runtime session with explicit settings.

    Args:
        path_or_bytes: a ``.onnx`` / ``.ort`` file or a serialized model (only models this pipeline produced or
            checked: ONNX Runtime has no sandbox). A ``.ort`` path is loaded as ORT format.
        threads: ``intra_op_num_threads`` (1: compute runs in the calling thread, so ``time.thread_time`` measures
            it; None: ONNX Runtime's default, all cores).
        providers: execution providers in priority order; each must be available in this onnxruntime build.
        opt_level: ``"disabled" | "basic" | "extended" | "all"``.
        profile: a folder: enable ORT's profiler and write its JSON trace there (``ort_profile*.json``).
        inter_threads: ``inter_op_num_threads`` (None: ORT's default).
        execution_mode: ``"sequential" | "parallel"``.
        session_config: extra ``add_session_config_entry`` pairs.
        log_severity: ORT log level (3: errors only; ORT warns about harmless things such as unused initializers).

    Returns:
        The session.

    Raises:
        InputError: a model path that is not a file.
        ConfigError: an unknown optimization level / execution mode, or a provider not available here.
    """
    if opt_level not in OPT_LEVELS:
        raise ConfigError(f"ORT session: unknown optimization level {opt_level!r}; known: {', '.join(OPT_LEVELS)}")
    if execution_mode not in EXEC_MODES:
        raise ConfigError(f"ORT session: unknown execution mode {execution_mode!r}; known: {', '.join(EXEC_MODES)}")
    available = set(ort.get_available_providers())
    missing = [p for p in providers if p not in available]
    if missing:
        raise ConfigError(f"ORT session: providers {missing} are not available in this onnxruntime build "
                          f"(available: {sorted(available)}); choose a target that uses those")
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    if inter_threads is not None:
        so.inter_op_num_threads = int(inter_threads)
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    so.execution_mode = EXEC_MODES[execution_mode]
    so.log_severity_level = int(log_severity)
    model: str | bytes
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        model = bytes(path_or_bytes)
    else:
        p = Path(path_or_bytes)
        if not p.is_file():
            raise InputError(f"model file {p} does not exist; export or copy the model there first")
        if p.suffix.lower() == ".ort":
            so.add_session_config_entry("session.load_model_format", "ORT")
        model = str(p)
    for k, v in session_config:
        so.add_session_config_entry(k, v)
    if profile is not None:
        Path(profile).mkdir(parents=True, exist_ok=True)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(profile) / "ort_profile")
    return ort.InferenceSession(model, sess_options=so, providers=list(providers))
