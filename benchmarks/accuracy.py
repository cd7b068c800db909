"""Top-1 accuracy of an ONNX model (ONNX Runtime, CPU EP) and of a PyTorch model, batched."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import torch

from pipeline.errors import ConfigError, InputError
from pipeline.ort_session import make_session
from pipeline.torch_eval import eval_mode


def _session(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"accuracy: model {p} does not exist")
    return make_session(p, threads=1)  # one thread: shared 2-core machines


def onnx_predict(path: str | Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits of the model's first output for ``x`` ``(N, C, H, W)``, run in batches (batch 1 if the graph's batch is fixed).

    Raises:
        InputError: missing model file.
        ConfigError: ``batch < 1`` or a model with more than one input.
    """
    if batch < 1:
        raise ConfigError(f"onnx_predict: batch must be >= 1 (got {batch})")
    sess = _session(path)
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ConfigError(f"onnx_predict: {Path(path).name} has {len(inputs)} inputs; exactly one is supported")
    dim0 = inputs[0].shape[0] if inputs[0].shape else None
    step = int(dim0) if isinstance(dim0, int) and dim0 > 0 else batch
    x = np.ascontiguousarray(x, dtype=np.float32)
    outs = []
    for i in range(0, len(x), step):
        xb = x[i:i + step]
        if isinstance(dim0, int) and dim0 > 0 and len(xb) < dim0:  # fixed batch: pad the tail
            pad = np.zeros((dim0 - len(xb), *xb.shape[1:]), np.float32)
            outs.append(sess.run(None, {inputs[0].name: np.concatenate([xb, pad])})[0][: len(xb)])
        else:
            outs.append(sess.run(None, {inputs[0].name: xb})[0])
    if not outs:
        n_out = sess.get_outputs()[0].shape[-1]
        return np.zeros((0, n_out if isinstance(n_out, int) else 0), np.float32)
    return np.concatenate(outs, axis=0)


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    y = np.asarray(y).reshape(-1)
    if len(y) != len(logits):
        raise ConfigError(f"accuracy: {len(logits)} predictions but {len(y)} labels")
    if len(y) == 0:
        raise ConfigError("accuracy: no samples")
    return float((logits.argmax(axis=1) == y).mean())


def onnx_accuracy(path: str | Path, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of the ONNX model on ``(x, y)``."""
    return _accuracy(onnx_predict(path, x, batch=batch), y)


def torch_accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of a PyTorch model in eval mode (training flags restored afterwards)."""
    if batch < 1:
        raise ConfigError(f"torch_accuracy: batch must be >= 1 (got {batch})")
    outs = []
    with eval_mode(model), torch.no_grad():
        xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
        for i in range(0, len(xt), batch):
            outs.append(model(xt[i:i + batch]).float().cpu().numpy())
    logits = np.concatenate(outs, axis=0) if outs else np.zeros((0, 1), np.float32)
    return _accuracy(logits, y)
