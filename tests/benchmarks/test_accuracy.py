"""ONNX and PyTorch top-1 accuracy agree on a tiny model; fixed-batch graphs and bad inputs are handled."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.accuracy import onnx_accuracy, onnx_predict, torch_accuracy
from exporters.onnx import export_onnx
from pipeline.errors import PipelineError
from tests.helpers.toy_models import plain_cnn


def _net() -> nn.Module:
    return plain_cnn(1, (4,), 3, pool=2)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 1, 8, 8)).astype(np.float32)  # 37: batches of 16 leave a partial last batch
    with torch.no_grad():
        pred = _net().eval()(torch.from_numpy(x)).argmax(1).numpy()
    wrong = (pred + 1) % 3
    y = np.where(np.arange(len(x)) < 20, pred, wrong)  # exactly the first 20 are right
    return x, y, pred


def test_onnx_and_torch_accuracy_agree(tmp_path: Path, data) -> None:
    x, y, pred = data
    model = _net()
    path = tmp_path / "m.onnx"
    export_onnx(model, (1, 8, 8), path)
    logits = onnx_predict(path, x, batch=16)
    assert logits.shape == (37, 3) and logits.dtype == np.float32
    assert np.array_equal(logits.argmax(1), pred)
    assert onnx_accuracy(path, x, y, batch=16) == pytest.approx(20 / 37)
    assert torch_accuracy(model, x, y, batch=16) == pytest.approx(20 / 37)
    assert onnx_accuracy(path, x, pred) == 1.0
    model.train()
    torch_accuracy(model, x, y)
    assert model.training  # the caller's mode is restored


def test_fixed_batch_model_is_run_at_its_batch(tmp_path: Path, data) -> None:
    x, y, _ = data
    path = tmp_path / "fixed.onnx"
    export_onnx(_net(), (1, 8, 8), path, dynamic_batch=False)
    assert onnx_predict(path, x, batch=16).shape == (37, 3)
    assert onnx_accuracy(path, x, y) == pytest.approx(20 / 37)


def test_bad_inputs_raise(tmp_path: Path, data) -> None:
    x, y, _ = data
    with pytest.raises(PipelineError):
        onnx_predict(tmp_path / "missing.onnx", x)
    path = tmp_path / "m.onnx"
    export_onnx(_net(), (1, 8, 8), path)
    with pytest.raises(PipelineError):
        onnx_accuracy(path, x, y[:-1])
