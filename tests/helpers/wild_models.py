"""Small models of the four head kinds, exported the way converters write them in the wild, for the heads tests and
the pipeline's end-to-end tests.

Each :class:`WildModel` builds a torch net with non-square input, and :func:`export_wild` writes it as ONNX the way
paddle2onnx / some tf2onnx exports do: a torch export (opset 11 or 18, dynamic batch on every input and output), then
every initializer moved into a ``Constant`` node at the front of the graph.

* ``dense_text`` -- a text-probability map (1 channel, sigmoid) at the input's 48x80 resolution: strided convs, a
  ConvTranspose and a Resize decoder;
* ``ctc_recognizer`` -- a text-line recognizer on 3x32x128: convs, pooling over height, a ``[T, N, K]`` permute and
  softmax (CTC layout, T = 32 steps, 11 classes with blank 0; softmax as PaddleOCR's recognizers end -- the
  importer has no LogSoftmax yet);
* ``multi_head`` -- logits ``[N, 10]`` and an L2-normalised embedding ``[N, 16]`` from one backbone;
* ``dw_separable`` -- a MobileNetV2-style classifier on 3x40x56: depthwise + 1x1 convs, an SE block, Hardswish.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper
from torch import nn


class DenseTextNet(nn.Module):
    """1-channel text-probability map at input resolution (DB-style detector head in miniature)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.c1(x)))
        y = F.relu(self.c2(y))
        y = F.relu(self.c3(y)) + y
        y = F.relu(self.up(y))                                              # ConvTranspose: 1/4 -> 1/2
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)  # Resize: 1/2 -> 1/1
        return torch.sigmoid(self.head(y))


class CTCRecognizer(nn.Module):
    """CRNN-style recognizer without the RNN: [N, 3, 32, 128] -> [T=32, N, K=11] per-step class probabilities."""

    def __init__(self, classes: int = 11) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.c3 = nn.Conv2d(32, 32, (3, 1), padding=(1, 0))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(F.relu(self.c1(x)), 2)                              # 16 x 64
        y = F.max_pool2d(F.relu(self.bn2(self.c2(y))), (2, 2))               # 8 x 32
        y = F.relu(self.c3(y)).mean(dim=2)                                   # pool over height: [N, C, T]
        y = self.fc(y.permute(2, 0, 1))                                      # [T, N, K]
        return torch.softmax(y, dim=-1)


class MultiHeadNet(nn.Module):
    """Classification logits and an L2-normalised embedding from one backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.cls = nn.Linear(16, 10)
        self.emb = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = F.relu(self.c2(F.relu(self.c1(x))))
        f = y.mean(dim=(2, 3))
        e = self.emb(f)
        # L2 normalisation by ReduceMean/Sqrt/Div: F.normalize exports ReduceL2 + Expand, which the importer lacks.
        return self.cls(f), e / torch.sqrt((e * e).mean(dim=1, keepdim=True) * e.shape[1] + 1e-12)


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(ch, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, SE, 1x1 project (+ residual when the shape allows)."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.se = SqueezeExcite(mid, max(4, mid // 4))
        self.project = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardswish(self.bn1(self.expand(x)))
        y = F.hardswish(self.bn2(self.dw(y)))
        y = self.bn3(self.project(self.se(y)))
        return x + y if self.residual else y


class DWSeparableNet(nn.Module):
    """MobileNetV2/V3-style classifier: stem, inverted residual blocks, 1x1 head conv, Hardswish, linear classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 2, 1), InvertedResidual(16, 24, 2, 2),
                                    InvertedResidual(24, 24, 2, 1))
        self.head = nn.Conv2d(24, 48, 1)
        self.fc = nn.Linear(48, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(F.hardswish(self.stem(x)))
        y = F.hardswish(self.head(y)).mean(dim=(2, 3))
        return self.fc(y)


@dataclasses.dataclass(frozen=True)
class WildModel:
    """A test model: how to build it, its input (C, H, W), output names, each output's batch axis and its kind."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    output_names: tuple[str, ...]
    batch_axes: tuple[int, ...]
    kinds: tuple[str, ...]
    layouts: tuple[str, ...]
    heads: tuple[str, ...]  # the final layers' attribute names (calibrated by make_model)


WILD_MODELS: dict[str, WildModel] = {
    "dense_text": WildModel("dense_text", DenseTextNet, (3, 48, 80), ("prob_map",), (0,), ("dense",), ("NCHW",), ("head",)),
    "ctc_recognizer": WildModel("ctc_recognizer", CTCRecognizer, (3, 32, 128), ("ctc_logits",), (1,), ("sequence",),
                                ("TNK",), ("fc",)),
    "multi_head": WildModel("multi_head", MultiHeadNet, (3, 40, 40), ("logits", "embedding"), (0, 0),
                            ("classify", "embedding"), ("NK", "ND"), ("cls", "emb")),
    "dw_separable": WildModel("dw_separable", DWSeparableNet, (3, 40, 56), ("logits",), (0,), ("classify",), ("NK",),
                                ("fc",)),
}


def sample_inputs(spec: WildModel, n: int, seed: int = 0) -> np.ndarray:
    """``[n, C, H, W]`` float32 images with per-image structure (channel offsets, a coarse 4x4 pattern, noise), so
    a model's outputs differ from image to image (i.i.d. noise averages out in pooled features)."""
    c, h, w = spec.input_shape
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, c, 4, 4))
    pattern = np.kron(coarse, np.ones((1, 1, -(-h // 4), -(-w // 4))))[:, :, :h, :w]
    x = pattern + rng.standard_normal((n, c, 1, 1)) + 0.3 * rng.standard_normal((n, c, h, w))
    return x.astype(np.float32)


def make_model(spec: WildModel, seed: int = 0) -> nn.Module:
    """The net in eval mode with seeded weights, non-trivial BatchNorm statistics (so folding is exercised) and
    data-calibrated final layers: each output channel of each head has mean 0 and std 3 on :func:`sample_inputs`,
    so outputs are confident and input-dependent as a trained model's are (a random net's are near-constant)."""
    torch.manual_seed(seed)
    net = spec.build()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
    net.eval()
    x = torch.from_numpy(sample_inputs(spec, 32, seed=seed + 1000))
    for name in spec.heads:
        layer = getattr(net, name)
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
        with torch.no_grad():
            net(x)
        handle.remove()
        y = seen[0]
        dims = [d for d in range(y.dim()) if d != (1 if isinstance(layer, nn.Conv2d) else y.dim() - 1)]
        mean, std = y.mean(dim=dims), y.std(dim=dims).clamp_min(1e-6)
        scale = 3.0 / std
        with torch.no_grad():
            layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
            layer.bias.copy_((layer.bias - mean) * scale)
    return net


def to_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move every initializer into a Constant node at the front of the graph, as paddle2onnx writes weights."""
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(consts + nodes)
    del model.graph.initializer[:]
    return model


def export_wild(net: nn.Module, spec: WildModel, path: str | Path, opset: int) -> Path:
    """Export ``net`` (built from ``spec``) as a converter would: dynamic batch, Constant-node weights."""
    path = Path(path)
    dyn = {"x": {0: "n"}, **{name: {axis: "n"} for name, axis in zip(spec.output_names, spec.batch_axes)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, *spec.input_shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=list(spec.output_names), dynamic_axes=dyn)
    onnx.save(to_constant_nodes(onnx.load(str(path))), str(path))
    return path
