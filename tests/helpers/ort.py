"""ONNX Runtime in tests: every session comes from :func:`pipeline.ort_session.make_session` (one thread, CPU), so
tests run the models the way the pipeline does."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.ort_session import make_session


def session(model: str | Path | bytes | onnx.ModelProto) -> Any:
    """A single-threaded CPU session of a ``.onnx``/``.ort`` file, serialized bytes or an in-memory proto."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return make_session(model, threads=1)


def run_first(model: Any, x: np.ndarray) -> np.ndarray:
    """The first output of a single-input model (a session, or anything :func:`session` takes) for ``x``."""
    sess = model if hasattr(model, "get_inputs") else session(model)
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x)})[0]
