"""Calibration statistics of the target layers: one pass over calibration images, forward hooks (torch) or extra graph
outputs (ONNX Runtime), accumulating the second moments of :mod:`pipeline.factorize.formats.stats` in float64.

Memory is bounded: each image contributes at most ``positions`` sampled positions per statistic (a seeded generator
per layer and statistic, so the torch and ORT paths sample the same positions), at most ``max_images`` images are
used, and only the statistics each layer's format needs (``Format.stat_kinds``) are kept. Both paths hand the same
float32 activations to :func:`accumulate`, so their statistics agree to float32 rounding of the activations.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from pipeline.errors import ConfigError
from pipeline.factorize.formats.base import resolved_padding
from pipeline.factorize.formats.onnx_nodes import numeric_pads
from pipeline.factorize.formats.stats import DEFAULT_EPS, KINDS, LayerStats
from pipeline.ort_session import make_session

#: sampled positions per image and statistic (bounds the moment cost to d^2 * positions per image)
DEFAULT_POSITIONS = 128
DEFAULT_MAX_IMAGES = 64


@dataclass(frozen=True)
class ConvGeometry:
    """What im2col needs of a conv: kernel, stride, dilation and ``[top, left, bottom, right]`` zero padding."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]

    @classmethod
    def of(cls, layer: nn.Conv2d) -> "ConvGeometry":
        """The geometry of a torch conv (numeric or resolvable string padding)."""
        ph, pw = resolved_padding(layer) or (0, 0)
        return cls(tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.dilation), (ph, pw, ph, pw))


class _Sampler:
    """Per-statistic seeded generators: the same images in the same order give the same positions on every path."""

    def __init__(self, seed: int) -> None:
        self.gens = {k: torch.Generator().manual_seed(seed * len(KINDS) + i) for i, k in enumerate(KINDS)}

    def take(self, kind: str, cols: torch.Tensor, k: int) -> torch.Tensor:
        """At most ``k`` of the columns of ``cols`` (d x m), drawn without replacement."""
        m = cols.shape[1]
        if m <= k:
            return cols
        return cols[:, torch.randperm(m, generator=self.gens[kind])[:k]]


def accumulate(stats: LayerStats, kinds: Iterable[str], x: torch.Tensor, y: torch.Tensor,
               geom: ConvGeometry | None, sampler: _Sampler, positions: int) -> None:
    """Add one batch's statistics: ``x`` the layer input, ``y`` its output without the bias; ``geom`` None = linear.

    Each image is processed on its own so the im2col buffer holds one image at a time.
    """
    kinds = tuple(kinds)
    if geom is None:  # linear: every leading dimension is a sample
        xs, ys = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        for i in range(xs.shape[0]):
            if "patch" in kinds:
                stats.add("patch", xs[i:i + 1].T)
            if "channel_out" in kinds:
                stats.add("channel_out", ys[i:i + 1].T)
        return
    (kh, _), (t, l, b, r) = geom.kernel, geom.pads
    picked: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    for i in range(x.shape[0]):
        xi = x[i:i + 1].detach()
        if "patch" in kinds:
            cols = F.unfold(F.pad(xi, (l, r, t, b)), geom.kernel, dilation=geom.dilation, stride=geom.stride)[0]
            picked["patch"].append(sampler.take("patch", cols, positions))
        if "vertical" in kinds:
            # The vertical kh x 1 conv of spatial SVD runs over every input column with the row padding only.
            cols = F.unfold(F.pad(xi, (0, 0, t, b)), (kh, 1), dilation=(geom.dilation[0], 1),
                            stride=(geom.stride[0], 1))[0]
            picked["vertical"].append(sampler.take("vertical", cols, positions))
        if "channel_in" in kinds:
            picked["channel_in"].append(sampler.take("channel_in", xi[0].reshape(xi.shape[1], -1), positions))
        if "channel_out" in kinds:
            yi = y[i].detach()
            picked["channel_out"].append(sampler.take("channel_out", yi.reshape(yi.shape[0], -1), positions))
    # One Gram per batch and statistic (a larger product runs faster than one per image).
    for k, cols_list in picked.items():
        if cols_list:
            stats.add(k, torch.cat(cols_list, dim=1))


def _check_kinds(kinds: dict[str, tuple[str, ...]]) -> None:
    for name, ks in kinds.items():
        bad = [k for k in ks if k not in KINDS]
        if bad:
            raise ConfigError(f"layer {name!r}: unknown statistic(s) {bad}; known: {list(KINDS)}")


def _batches(images: torch.Tensor | np.ndarray, max_images: int, batch_size: int):
    n = min(len(images), int(max_images))
    for i in range(0, n, batch_size):
        yield images[i:min(i + batch_size, n)]


class _StopForward(Exception):
    """Raised by a hook once every hooked layer has been seen, to skip the rest of the forward pass."""


def collect_stats(model: nn.Module, kinds: dict[str, tuple[str, ...]], images: torch.Tensor, *,
                  max_images: int = DEFAULT_MAX_IMAGES, positions: int = DEFAULT_POSITIONS, batch_size: int = 16,
                  seed: int = 0, eps: float = DEFAULT_EPS, stop_early: bool = False) -> dict[str, LayerStats]:
    """Statistics of the named Conv2d/Linear layers of ``model`` on ``images`` (torch forward hooks, eval mode).

    Args:
        model: the model (not modified; put in eval mode for the pass and restored).
        kinds: ``{qualified layer name: statistics to collect}`` (see ``Format.stat_kinds``).
        images: calibration inputs (N, C, H, W); the first ``max_images`` are used.
        positions: sampled positions per image and statistic.
        stop_early: end each forward pass once every hooked layer ran once (a sequential factorizer hooks one layer).

    Returns:
        ``{name: LayerStats}``.
    """
    _check_kinds(kinds)
    stats = {n: LayerStats(eps=eps) for n in kinds}
    samplers = {n: _Sampler(seed) for n in kinds}
    seen: set[str] = set()
    hooks = []
    for name in kinds:
        layer = model.get_submodule(name)
        geom = ConvGeometry.of(layer) if isinstance(layer, nn.Conv2d) else None

        def hook(mod: nn.Module, inp: tuple[Any, ...], out: torch.Tensor, name: str = name,
                 geom: ConvGeometry | None = geom) -> None:
            y = out.detach()
            if mod.bias is not None:
                y = y - (mod.bias.detach()[None, :, None, None] if geom is not None else mod.bias.detach())
            accumulate(stats[name], kinds[name], inp[0].detach(), y, geom, samplers[name], positions)
            seen.add(name)
            if stop_early and len(seen) == len(kinds):
                raise _StopForward

        hooks.append(layer.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for xb in _batches(images, max_images, batch_size):
                seen.clear()
                try:
                    model(torch.as_tensor(xb))
                except _StopForward:
                    pass
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stats


def _onnx_geometry(attrs: dict[str, Any], in_hw: tuple[int, int]) -> ConvGeometry:
    pads = numeric_pads(attrs, in_hw)
    return ConvGeometry(tuple(int(k) for k in attrs["kernel_shape"]), tuple(int(s) for s in attrs.get("strides", [1, 1])),
                        tuple(int(d) for d in attrs.get("dilations", [1, 1])), tuple(int(p) for p in pads))


def collect_stats_onnx(proto: Any, kinds: dict[str, tuple[str, ...]], images: np.ndarray, *,
                       max_images: int = DEFAULT_MAX_IMAGES, positions: int = DEFAULT_POSITIONS,
                       batch_size: int = 16, seed: int = 0, eps: float = DEFAULT_EPS) -> dict[str, LayerStats]:
    """The statistics of :func:`collect_stats` for Conv nodes of an ONNX graph, from ONNX Runtime.

    Each node's input and output become extra graph outputs; the calibration images run through ORT (no graph
    optimisation, so no value is fused away) and the same :func:`accumulate` runs on them.

    Args:
        proto: the ``ModelProto`` (not modified).
        kinds: ``{Conv node name: statistics}``.
        images: calibration inputs (N, C, H, W) float32.
    """

    _check_kinds(kinds)
    m = copy.deepcopy(proto)
    nodes = {n.name: n for n in m.graph.node if n.op_type == "Conv"}
    missing = sorted(set(kinds) - set(nodes))
    if missing:
        raise ConfigError(f"ONNX calibration: no Conv node named {missing[:5]} in the graph")
    inits = {t.name: t for t in m.graph.initializer}
    known = {o.name for o in m.graph.output}
    fetch: list[str] = []
    for name in kinds:
        for v in (nodes[name].input[0], nodes[name].output[0]):
            if v not in known:
                m.graph.output.append(helper.make_tensor_value_info(v, 1, None))  # 1 = FLOAT
                known.add(v)
            if v not in fetch:
                fetch.append(v)
    # No graph optimisation: fused/renamed nodes must not hide the values we ask for.
    sess = make_session(m.SerializeToString(), threads=None, inter_threads=None, opt_level="disabled")
    inp = sess.get_inputs()[0].name
    stats = {n: LayerStats(eps=eps) for n in kinds}
    samplers = {n: _Sampler(seed) for n in kinds}
    biases = {}
    for name in kinds:
        node = nodes[name]
        bname = node.input[2] if len(node.input) > 2 else ""
        biases[name] = torch.from_numpy(numpy_helper.to_array(inits[bname]).astype(np.float32)) if bname else None
    attrs = {name: {a.name: helper.get_attribute_value(a) for a in nodes[name].attribute} for name in kinds}
    for xb in _batches(images, max_images, batch_size):
        outs = dict(zip(fetch, sess.run(fetch, {inp: np.ascontiguousarray(xb, dtype=np.float32)})))
        for name in kinds:
            node = nodes[name]
            x = torch.from_numpy(np.array(outs[node.input[0]]))
            y = torch.from_numpy(np.array(outs[node.output[0]]))
            if biases[name] is not None:
                y = y - biases[name][None, :, None, None]
            geom = _onnx_geometry(attrs[name], tuple(x.shape[2:4]))
            accumulate(stats[name], kinds[name], x, y, geom, samplers[name], positions)
    return stats
