"""Tiny fp32 and int8 QDQ models for the exporter tests (a few KB each, built in code)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.onnx import export_onnx

SHAPE = (3, 8, 8)
MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)


def net() -> nn.Module:
    """conv(pad 1)-BN-ReLU-conv(pad 1)-ReLU-flatten-linear: padded convs so a wrong border fold would show."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                      nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    return m


def raw_images(n: int, seed: int = 0) -> np.ndarray:
    """Raw pixels in [0, 1], as an app reads them."""
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    """What the dataset loader does: (x - mean) / std per channel."""
    m = np.asarray(MEAN, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(STD, np.float32).reshape(1, -1, 1, 1)
    return ((x - m) / s).astype(np.float32)


def export_pair(folder: Path) -> tuple[Path, Path]:
    """``model.onnx`` (fp32) and ``model.int8.onnx`` (static QDQ, calibrated on normalised images) in ``folder``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = folder / "model.onnx"
    export_onnx(net(), SHAPE, fp32)
    calib = normalise(raw_images(16, seed=1))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    int8 = folder / "model.int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return fp32, int8
