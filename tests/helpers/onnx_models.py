"""Tiny ONNX models built in code for the quantize, entropy and native-decoder tests (CPU, a few KB each)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.helpers.ort import run_first


def tiny_net(seed: int = 0, outlier: float | None = None) -> nn.Module:
    """Conv-ReLU-Conv(stride 2)-AvgPool(2x2)-Linear on 3x16x16 inputs, with predictions that vary by image.

    The second conv has zero-mean filters and no bias, and the classifier no bias, so the argmax depends on the
    image rather than on the biases (random nets otherwise predict one class for every input).

    Args:
        seed: torch seed of the weights.
        outlier: if set, every output channel of the first conv gets this weight on input channel 2 (centre tap).
            Images with channel 2 == 0 never see it in fp32, but per-channel int8 weight scales stretch to cover it,
            so the first conv's real weights round to zero: quantizing that one node visibly hurts.
    """
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        m[2].weight -= m[2].weight.mean((1, 2, 3), keepdim=True)
        m[2].bias.zero_()
        m[5].bias.zero_()
    if outlier is not None:
        with torch.no_grad():
            m[0].weight[:, 2, 1, 1] = outlier
    return m


def export(m: nn.Module, path: Path) -> Path:
    """Export to ONNX (opset 17, TorchScript exporter, dynamic batch)."""
    torch.onnx.export(m, torch.zeros(1, 3, 16, 16), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def images(n: int, seed: int = 0, zero_channel2: bool = False) -> np.ndarray:
    """Smooth random 'images' (blurred noise, so neighbouring pixels correlate like real ones)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 16, 16)).astype(np.float32)
    x = (x + np.roll(x, 1, 2) + np.roll(x, 1, 3) + np.roll(x, (1, 1), (2, 3))) / 2.0
    if zero_channel2:
        x[:, 2] = 0.0
    return x.astype(np.float32)


def run(path: Path, x: np.ndarray) -> np.ndarray:
    """Single-threaded ORT CPU inference."""
    return run_first(path, x)


def qdq_weight(path: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, scales) of the ``k``-th Conv/Gemm of a QDQ model, found through its weight DequantizeLinear
    (the shipped int8 graphs have short internal tensor names, so tests look weights up by structure)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    compute = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    dq = producers[compute[k].input[1]]
    return inits[dq.input[0]], inits[dq.input[1]]


def input_quant(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of the QuantizeLinear that quantizes the graph input of a QDQ model."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    name = m.graph.input[0].name
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name)
    return inits[q.input[1]], inits[q.input[2]]
