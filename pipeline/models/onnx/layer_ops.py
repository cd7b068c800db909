"""Ops that become standard ``nn`` layers, registered as direct attributes of the root module named after their
ONNX node, so the factorizer finds them with ``named_modules()`` and replaces them with ``setattr``: Conv ->
``nn.Conv2d``, ConvTranspose -> ``nn.ConvTranspose2d``, BatchNormalization -> ``nn.BatchNorm1d/2d``, Gemm and MatMul
with a constant 2-D weight -> ``nn.Linear`` (a following bias Add fused), LayerNormalization -> ``nn.LayerNorm``.
Their weights are ``nn.Parameter``s, so an imported model finetunes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.models.onnx.builder import GraphBuilder

__all__ = ["LayerOps"]


class LayerOps(GraphBuilder):
    """Handlers (``op_<OpType>``) of the ops that carry weights (mixed into the converter)."""

    def op_Conv(self, n: Any) -> None:
        w = self.const(n, 1, "weight")
        b = self.const(n, 2, "bias")
        if w is None or w.dim() != 4 or n.input[0] not in self.runtime:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} is not a 2-D convolution of a "
                             f"run-time input with a constant 4-D weight; only Conv2d is supported")
        cout, cin_g, kh, kw = (int(v) for v in w.shape)
        groups = int(self.attr(n, "group", 1))
        a = self.spatial_attrs(n, [kh, kw])
        l, r, t, btm = a["pad"]
        symmetric = a["auto_pad"] is None and l == r and t == btm
        conv = nn.Conv2d(cin_g * groups, cout, (kh, kw), stride=tuple(a["strides"]),
                         padding=(t, l) if symmetric else 0, dilation=tuple(a["dilations"]), groups=groups,
                         bias=b is not None)
        with torch.no_grad():
            conv.weight.copy_(w.float())
            if b is not None:
                conv.bias.copy_(b.float().reshape(-1))
        name = self.unique_name(n.name, f"conv_{len(self.nodes)}")
        self.layers[name] = conv
        attrs = {"pad": None if symmetric else a["pad"], "auto_pad": a["auto_pad"], "kernel": [kh, kw],
                 "strides": a["strides"], "dilations": a["dilations"]}
        self.emit(n, [n.input[0]], attrs, module=name)

    def op_BatchNormalization(self, n: Any) -> None:
        scale, bias, mean, var = (self.const(n, i, w) for i, w in
                                  ((1, "scale"), (2, "bias"), (3, "running mean"), (4, "running variance")))
        if any(v is None for v in (scale, bias, mean, var)):
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} lacks scale/bias/mean/variance")
        c = int(scale.numel())  # type: ignore[union-attr]
        momentum = 1.0 - float(self.attr(n, "momentum", 0.9))  # ONNX weights the running value, torch the new one
        rank = self.ranks.get(n.input[0], 4)
        cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d if rank in (2, 3) else None
        if cls is None:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} normalises a rank-{rank} tensor; "
                             f"only 2-D, 3-D and 4-D inputs are supported")
        bn = cls(c, eps=float(self.attr(n, "epsilon", 1e-5)), momentum=momentum)
        with torch.no_grad():
            bn.weight.copy_(scale.float().reshape(-1))  # type: ignore[union-attr]
            bn.bias.copy_(bias.float().reshape(-1))  # type: ignore[union-attr]
            bn.running_mean.copy_(mean.float().reshape(-1))  # type: ignore[union-attr]
            bn.running_var.copy_(var.float().reshape(-1))  # type: ignore[union-attr]
        name = self.unique_name(n.name, f"batchnorm_{len(self.nodes)}")
        self.layers[name] = bn
        self.emit(n, [n.input[0]], {}, module=name)

    def op_Gemm(self, n: Any) -> None:
        bmat = self.const(n, 1, "B (weight)")
        c = self.const(n, 2, "C (bias)")
        if bmat is None or bmat.dim() != 2:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} needs a constant 2-D B")
        alpha, beta = float(self.attr(n, "alpha", 1.0)), float(self.attr(n, "beta", 1.0))
        weight = (bmat if self.attr(n, "transB", 0) else bmat.t()).float() * alpha  # Linear wants (out, in)
        out_f, in_f = (int(v) for v in weight.shape)
        bias = None
        if c is not None:
            if c.numel() not in (1, out_f) or (c.dim() == 2 and c.shape[0] != 1):
                raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} has a bias of shape "
                                 f"{tuple(c.shape)}; only a per-output bias (N,) or (1, N) is supported")
            bias = (c.float().reshape(-1) * beta).expand(out_f)
        lin = nn.Linear(in_f, out_f, bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(weight)
            if bias is not None:
                lin.bias.copy_(bias)
        name = self.unique_name(n.name, f"gemm_{len(self.nodes)}")
        self.layers[name] = lin
        self.emit(n, [n.input[0]], {"transA": bool(self.attr(n, "transA", 0))}, module=name)

    def op_MatMul(self, n: Any) -> None:
        a_name, b_name = n.input[0], n.input[1]
        w = self.consts.get(b_name)
        if a_name in self.runtime and w is not None and w.dim() == 2 and w.is_floating_point():
            lin = nn.Linear(int(w.shape[0]), int(w.shape[1]), bias=False)
            with torch.no_grad():
                lin.weight.copy_(w.t().float())
            name = self.unique_name(n.name, f"matmul_{len(self.nodes)}")
            self.layers[name] = lin
            self.emit(n, [a_name], {}, module=name)
            self.linear_of[n.output[0]] = len(self.nodes) - 1
            return
        self.generic(n, {})

    def op_Add(self, n: Any) -> None:
        # MatMul + Add(bias) is how some exporters write a Linear: fold the bias into the nn.Linear.
        for x, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            if x in self.linear_of and self.consumers.get(x) == 1 and self.is_const(b):
                idx = self.linear_of[x]
                prev = self.nodes[idx]
                lin = self.layers[prev.module]  # type: ignore[index]
                bias = self.consts[b]
                if bias.is_floating_point() and bias.numel() == lin.out_features and \
                        (bias.dim() == 1 or all(s == 1 for s in bias.shape[:-1])):
                    fused = nn.Linear(lin.in_features, lin.out_features, bias=True)
                    with torch.no_grad():
                        fused.weight.copy_(lin.weight)
                        fused.bias.copy_(bias.float().reshape(-1))
                    self.layers[prev.module] = fused  # type: ignore[index]
                    self.nodes[idx] = dataclasses.replace(prev, outputs=(n.output[0],))
                    del self.linear_of[x]
                    self.runtime.add(n.output[0])
                    return
        self.generic(n, {})

    def op_ConvTranspose(self, n: Any) -> None:
        w = self.const(n, 1, "weight")
        b = self.const(n, 2, "bias")
        if w is None or w.dim() != 4 or n.input[0] not in self.runtime:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} is not a 2-D transposed convolution "
                             f"of a run-time input with a constant 4-D weight; only ConvTranspose2d is supported")
        if self.attr(n, "output_shape", None) is not None:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} sets output_shape, which the importer "
                             f"does not read; re-export it with explicit pads (torch's ConvTranspose2d does)")
        auto = self.attr(n, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto not in ("NOTSET", "VALID"):
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} uses auto_pad {auto}, which the "
                             f"importer does not read; re-export it with explicit pads")
        cin, cout_g, kh, kw = (int(v) for v in w.shape)
        groups = int(self.attr(n, "group", 1))
        pads = [0, 0, 0, 0] if auto == "VALID" else list(self.attr(n, "pads", [0, 0, 0, 0]))
        top, left, bottom, right = (int(v) for v in pads)
        strides = [int(v) for v in self.attr(n, "strides", [1, 1])]
        dilations = [int(v) for v in self.attr(n, "dilations", [1, 1])]
        out_pad = [int(v) for v in self.attr(n, "output_padding", [0, 0])]
        # nn.ConvTranspose2d pads both sides alike: it takes the smaller pad of each axis and the rest is cropped
        # after it (output_padding adds rows at the end in both definitions, so the crop stays exact).
        ph, pw = min(top, bottom), min(left, right)
        deconv = nn.ConvTranspose2d(cin, cout_g * groups, (kh, kw), stride=tuple(strides), padding=(ph, pw),
                                    output_padding=tuple(out_pad), groups=groups, bias=b is not None,
                                    dilation=tuple(dilations))
        with torch.no_grad():
            deconv.weight.copy_(w.float())
            if b is not None:
                deconv.bias.copy_(b.float().reshape(-1))
        name = self.unique_name(n.name, f"convtranspose_{len(self.nodes)}")
        self.layers[name] = deconv
        crop = [left - pw, right - pw, top - ph, bottom - ph]
        self.emit(n, [n.input[0]], {"crop": crop if any(crop) else None}, module=name)

    def op_LayerNormalization(self, n: Any) -> None:
        scale = self.const(n, 1, "scale")
        bias = self.const(n, 2, "bias")
        axis = int(self.attr(n, "axis", -1))
        rank = self.ranks.get(n.input[0])
        if axis >= 0 and rank is None:
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} normalises from axis {axis} of a "
                             f"tensor of unknown rank; re-export it with axis=-1 or with shapes declared")
        ndims = -axis if axis < 0 else rank - axis  # type: ignore[operator]
        if scale is None or scale.dim() != ndims or (bias is not None and tuple(bias.shape) != tuple(scale.shape)):
            raise InputError(f"ONNX model {self.path!r}: {self.node_label(n)} has a scale/bias that is not exactly "
                             f"the normalised shape ({ndims} trailing dims); only that form maps to nn.LayerNorm")
        ln = nn.LayerNorm(tuple(int(v) for v in scale.shape), eps=float(self.attr(n, "epsilon", 1e-5)),
                          bias=bias is not None)
        with torch.no_grad():
            ln.weight.copy_(scale.float())
            if bias is not None:
                ln.bias.copy_(bias.float())
        name = self.unique_name(n.name, f"layernorm_{len(self.nodes)}")
        self.layers[name] = ln
        self.emit(n, [n.input[0]], {}, module=name)
