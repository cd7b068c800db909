"""ONNX Runtime sessions for graphs the pipeline checked or produced: CPU execution provider only, no custom-op
libraries, one thread (evaluation and probing, not speed, on shared machines)."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["cpu_session", "run_first_output"]


def cpu_session(model_bytes: bytes) -> Any:
    """An ``onnxruntime.InferenceSession`` of a serialised model on the CPU execution provider."""
    import onnxruntime as ort  # heavy: loaded only when a graph is actually run

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def run_first_output(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The first output of a single-input model for ``x`` (float32)."""
    sess = cpu_session(model_bytes)
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})[0])
