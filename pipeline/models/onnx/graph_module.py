"""The torch module an imported ONNX graph becomes: standard layers as root attributes plus an interpreted,
topologically ordered tuple of plain node specs.

Layers are looked up by name *at call time*, so a factorizer that swaps ``model.conv1`` for an ``nn.Sequential``
changes what runs; the node specs are plain data, so the module deep-copies and pickles.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.onnx.ops import OPS, same_pads

__all__ = ["Node", "OnnxGraphModule"]


@dataclass(frozen=True)
class Node:
    """One interpreted graph step: plain data, so the module deep-copies and pickles."""

    op: str
    name: str
    inputs: tuple[str, ...]          # "" marks an absent optional input
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    module: str | None = None        # attribute name of the layer this node runs, if any
    release: tuple[str, ...] = ()    # values no later node needs (freed to keep memory flat)


class OnnxGraphModule(nn.Module):
    """An imported ONNX graph: standard layers as root attributes plus an interpreted list of node specs.

    Layers (``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.BatchNorm1d/2d``, ``nn.Linear``, ``nn.LayerNorm``) are direct
    children named after their ONNX nodes, so the factorizer can replace one with ``setattr(model, name, new)``;
    :meth:`forward` fetches every layer with ``getattr`` at call time. Constants the graph needs at run time are
    non-persistent buffers: they are rebuilt from the ONNX file, so the state dict holds exactly the layers'
    parameters and BN statistics.
    """

    def __init__(self, input_name: str, output_names: Sequence[str], nodes: Sequence[Node],
                 layers: dict[str, nn.Module], consts: dict[str, tuple[str, torch.Tensor]], source: str) -> None:
        super().__init__()
        self._input_name = input_name
        self._output_names = tuple(output_names)
        self._nodes = tuple(nodes)
        self._source = source
        self.fp16_weights: tuple[str, ...] = ()  # half-precision tensors of the file, imported as float32
        for name, layer in layers.items():
            self.add_module(name, layer)
        # value name in the graph -> buffer attribute name
        self._const_buffers: dict[str, str] = {}
        for value_name, (buf_name, tensor) in consts.items():
            self.register_buffer(buf_name, tensor, persistent=False)
            self._const_buffers[value_name] = buf_name

    @property
    def graph_nodes(self) -> tuple[Node, ...]:
        """The interpreted node specs in execution order."""
        return self._nodes

    def extra_repr(self) -> str:
        return f"source={self._source!r}, nodes={len(self._nodes)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the graph on ``x`` (the model's single input); returns one tensor or a tuple for several outputs."""
        env: dict[str, Any] = {self._input_name: x}
        for value_name, buf_name in self._const_buffers.items():
            env[value_name] = getattr(self, buf_name)
        for node in self._nodes:
            args = [env[n] if n else None for n in node.inputs]
            if node.module is not None:
                out = _run_layer(getattr(self, node.module), node, args)
            else:
                out = OPS[node.op](args, node.attrs)
            if len(node.outputs) == 1:
                env[node.outputs[0]] = out
            else:  # a multi-output op (Split) returns a tuple
                for name, value in zip(node.outputs, out):
                    env[name] = value
            for n in node.release:
                env.pop(n, None)
        outs = tuple(env[n] for n in self._output_names)
        return outs[0] if len(outs) == 1 else outs


def _run_layer(layer: nn.Module, node: Node, args: list[Any]) -> torch.Tensor:
    """Run one layer node: explicit (asymmetric or input-size dependent) padding before a Conv, the crop of an
    asymmetrically padded ConvTranspose after it, the transposed input of a ``transA`` Gemm."""
    x = args[0]
    if node.op == "Conv":
        pad = node.attrs.get("pad")
        if node.attrs.get("auto_pad"):
            pad = same_pads(x, node.attrs["kernel"], node.attrs["strides"], node.attrs["dilations"],
                             node.attrs["auto_pad"])
        if pad is not None and any(pad):
            x = F.pad(x, pad)
        return layer(x)
    if node.op == "ConvTranspose":
        y = layer(x)
        crop = node.attrs.get("crop")
        if crop is not None:  # (left, right, top, bottom) that nn.ConvTranspose2d's symmetric padding cannot take
            l, r, t, b = crop
            y = y[..., t:y.shape[-2] - b, l:y.shape[-1] - r]
        return y
    if node.op == "Gemm" and node.attrs.get("transA"):
        x = x.transpose(0, 1)
    return layer(x)
